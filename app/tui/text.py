"""Untrusted text from the stores, made safe for a terminal.

Key names and values may hold Rich markup (``[bold red]``), ANSI escape
sequences (a real ESC byte) or bidirectional overrides. Everything that
reaches a widget goes through :func:`safe`: a ``rich.text.Text`` built
without markup parsing, with every control and format character shown as a
visible ``\\xNN`` / ``\\uNNNN`` escape so the terminal never interprets it.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey


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


def set_cell(table: DataTable[Any], row: RowKey | str, column: ColumnKey | str, value: Text) -> None:
    """Change one cell; its column grows when the new value is wider. Only then is the
    value measured: DataTable measures a narrower value against every cell of its column,
    which, for tables redrawn a few times a second, was most of the TUI's time."""
    key = column if isinstance(column, ColumnKey) else ColumnKey(column)
    wider = value.cell_len > table.columns[key].content_width
    table.update_cell(row, column, value, update_width=wider)


def set_cell_at(table: DataTable[Any], row: int, column: int, value: Text) -> None:
    """:func:`set_cell` by position."""
    row_key, column_key = table.coordinate_to_cell_key(Coordinate(row, column))
    set_cell(table, row_key, column_key, value)
