"""Untrusted text from the stores, made safe for a terminal.

Key names and values may hold Rich markup (``[bold red]``), ANSI escape
sequences (a real ESC byte) or bidirectional overrides. Everything that
reaches a widget goes through :func:`safe`: a ``rich.text.Text`` built
without markup parsing, with every control and format character shown as a
visible ``\\xNN`` / ``\\uNNNN`` escape so the terminal never interprets it.
"""

from __future__ import annotations

import unicodedata

from rich.text import Text


def printable(value: object, limit: int = 0) -> str:
    text = "" if value is None else str(value)
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    result = "".join(out)
    if limit and len(result) > limit:
        result = result[: limit - 1] + "…"
    return result


def safe(value: object, style: str = "", limit: int = 0, wrap: bool = False) -> Text:
    """A Text that renders exactly these characters (no markup, no escapes)."""
    # wrapped text folds a word longer than the line (a key name) instead of cutting it
    return Text(
        printable(value, limit), style=style, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis"
    )
