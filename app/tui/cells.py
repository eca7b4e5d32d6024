"""A family's cells (:class:`collectors.families.base.Cell`) as terminal text.

Tones map to styles here and only here; every piece goes through
:func:`app.tui.text.safe`, so key names and values are shown as the
characters they are — never as Rich markup or terminal escapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text

from app.tui.text import safe
from collectors.families.base import STATUS_TONE, Cell, Line, fmt_ms

TONE = {
    "": "",
    "good": "green",
    "bad": "bold red",
    "warn": "yellow",
    "dim": "dim",
    "bold": "bold",
    "accent": "cyan",
}


def wall_ms() -> int:
    return int(time.time() * 1000)


_clock: Callable[[], int] = wall_ms


def now_ms() -> int:
    """Now, for countdowns and a running run's lanes: the wall clock, or, in a replay, the
    recorded moment on screen (:func:`set_clock`)."""
    return _clock()


def set_clock(clock: Callable[[], int] | None) -> None:
    """Count down against ``clock`` (a replay's playhead); ``None``: the wall clock again."""
    global _clock
    _clock = clock or wall_ms


def render(cell: Cell, limit: int = 0, now: int | None = None) -> Text:
    """One cell: its pieces side by side (or the time left, for a countdown), cut to
    ``limit`` characters with an ellipsis."""
    if cell.until_ms is not None:
        left = cell.until_ms - (now if now is not None else now_ms())
        return safe(fmt_ms(left), "bold yellow" if left < 1000 else "")
    if cell.since_ms is not None:
        return safe(fmt_ms(max(0, (now if now is not None else now_ms()) - cell.since_ms)), "bold")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, piece in enumerate(cell.pieces):
        if i:
            out.append(" ")
        out.append_text(safe(piece.text, TONE.get(piece.tone, "")))
    if limit and len(out.plain) > limit:
        out.truncate(limit, overflow="ellipsis")
    return out


def render_lines(lines: tuple[Line, ...], now: int | None = None) -> Text:
    """A detail view: one line of cells each, wrapped to the screen."""
    text = Text()
    for i, line in enumerate(lines):
        if i:
            text.append("\n")
        for j, cell in enumerate(line):
            if j:
                text.append(" ")
            text.append_text(render(cell, now=now))
    text.no_wrap = False
    return text


def status_style(status: str) -> str:
    return TONE.get(STATUS_TONE.get(status, "bold"), "")
