"""A recording: the event stream as JSON lines, with keyframes to seek by.

The format (``coordscope record``; read by ``coordscope replay``)::

    {"type": "snapshot", "v": 1, "seq": ..., "at_ms": ..., "locks": [...], ..., "recorded_ms": ...}
    {"type": "lock.upserted", "v": 1, "seq": ..., "lock": {...}, "recorded_ms": ...}
    {"type": "lock.removed", "v": 1, "seq": ..., "id": "...", "recorded_ms": ...}
    {"type": "log", "v": 1, "seq": ..., "at_ms": ..., "level": ..., "source": ..., "text": ..., ...}
    ...
    {"type": "snapshot", ...}        <- a keyframe, every 30 s

Each line is one item of :mod:`collectors.events` in its wire form (without
the ``row``/``rows`` cells, which are derived: the replaying version draws
them with its own families) plus ``recorded_ms``, the wall-clock moment it
was written. The first line is a snapshot; every later snapshot is a
*keyframe*: the whole state at that moment, so a player can seek to any
time T by loading the last keyframe at or before T and applying only the
events between it and T. A keyframe's ``seq`` is the live sequence number
it reflects; events after it always have a larger one.

Error handling: a line that is not an event of a known schema version is
an error naming its line number — except the last line when the file does
not end with a newline: that is a recording cut by a kill mid-write, and
the line is dropped (``Recording.cut`` says so).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.events import SCHEMA_VERSION, Event, Snapshot, from_json, state_json, to_json

__all__ = ["Frame", "Recording", "RecordingError", "read_recording", "recording_line"]


class RecordingError(ValueError):
    """The file is not a coordscope recording (or not one this version reads)."""


@dataclass(frozen=True)
class Frame:
    at_ms: int
    """When it was recorded (wall clock, ms); never less than the frame before."""
    item: Event | Snapshot
    line: int
    """Its line number in the file (1-based), for messages."""


@dataclass
class Recording:
    name: str
    frames: list[Frame]
    keyframes: list[int] = field(default_factory=list)
    """Indexes into ``frames`` of every snapshot (the first frame is always one)."""
    cut: bool = False
    """The last line was cut short (a recorder killed mid-write) and was dropped."""

    def __post_init__(self) -> None:
        self.keyframes = [i for i, f in enumerate(self.frames) if isinstance(f.item, Snapshot)]
        self._key_times = [self.frames[i].at_ms for i in self.keyframes]
        self._times = [f.at_ms for f in self.frames]

    @property
    def start_ms(self) -> int:
        return self.frames[0].at_ms

    @property
    def end_ms(self) -> int:
        return self.frames[-1].at_ms

    @property
    def events(self) -> int:
        return len(self.frames) - len(self.keyframes)

    def keyframe_at(self, at_ms: int) -> int:
        """Index of the last keyframe recorded at or before ``at_ms`` (the first if none)."""
        return self.keyframes[max(0, bisect.bisect_right(self._key_times, at_ms) - 1)]

    def index_after(self, at_ms: int) -> int:
        """Index of the first frame recorded after ``at_ms``."""
        return bisect.bisect_right(self._times, at_ms)

    def keyframe_between(self, start: int, stop: int) -> bool:
        """Whether a keyframe lies in ``frames[start:stop]``."""
        i = bisect.bisect_left(self.keyframes, start)
        return i < len(self.keyframes) and self.keyframes[i] < stop


def recording_line(item: Event | Snapshot, recorded_ms: int) -> str:
    """One line of a recording (with its newline)."""
    body: dict[str, Any]
    if isinstance(item, Snapshot):
        body = {"type": "snapshot", "v": SCHEMA_VERSION, **state_json(item)}
    else:
        body = to_json(item)
        body.pop("row", None)
    body["recorded_ms"] = recorded_ms
    return json.dumps(body) + "\n"


def read_recording(path: str | Path) -> Recording:
    """Read and check a whole recording; raises :class:`RecordingError` naming the line."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read {name}: {exc.strerror or exc}") from None
    lines = raw.split(b"\n")
    unfinished = lines.pop()  # b"" when the file ends with a newline
    return parse(name, enumerate(lines, 1), unfinished, len(lines) + 1)


def parse(
    name: str, lines: Iterable[tuple[int, bytes]], unfinished: bytes = b"", unfinished_line: int = 0
) -> Recording:
    frames: list[Frame] = []
    last = 0
    for number, line in lines:
        if not line.strip():
            continue
        frame = _frame(name, number, line, last, first=not frames)
        last = frame.at_ms
        frames.append(frame)
    cut = False
    if unfinished.strip():
        try:
            frames.append(_frame(name, unfinished_line, unfinished, last, first=not frames))
        except RecordingError:
            if not frames:
                raise
            cut = True  # a recorder killed mid-line: everything before it is whole
    if not frames:
        raise RecordingError(f"{name}: empty file: not a coordscope recording")
    return Recording(name=name, frames=frames, cut=cut)


def _frame(name: str, number: int, line: bytes, last: int, first: bool) -> Frame:
    where = f"{name}:{number}"
    try:
        data = json.loads(line)
    except ValueError:
        raise RecordingError(f"{where}: not JSON: not a coordscope recording line") from None
    if not isinstance(data, dict):
        raise RecordingError(f"{where}: not a JSON object: not a coordscope recording line")
    if "v" in data and data["v"] != SCHEMA_VERSION:
        raise RecordingError(
            f"{where}: recorded with event schema version {data['v']!r}; "
            f"this coordscope reads version {SCHEMA_VERSION}"
        )
    try:
        item = from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{where}: not a coordscope event ({exc})") from None
    at = data.get("recorded_ms")
    if not isinstance(at, int) or isinstance(at, bool):
        raise RecordingError(f"{where}: no 'recorded_ms': not a coordscope recording line")
    if first and not isinstance(item, Snapshot):
        raise RecordingError(f"{where}: a recording starts with a snapshot, not {item.type!r}")
    return Frame(at_ms=max(at, last), item=item, line=number)
