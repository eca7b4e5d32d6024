"""Replaying a recording: a source of events for the bus, driven by a playhead.

:class:`Replay` stands where the collectors stand in a live process: the bus
reads its :class:`ReplayState` exactly as it reads the live state (a
snapshot, then drained events), so the TUI and the web page draw a
recording through their live code paths, and know no difference.

The playhead moves through the recording's time (``recorded_ms``) at a
speed (0.25× to 16×), or stands still (paused). Playing forward, every
frame that the playhead passes is applied to the state and becomes an event
for the viewers; a keyframe passed on the way is applied as the difference
between it and what the events built (normally nothing).

Seeking to time T, backwards or far forwards, does not replay from the
start: the state is rebuilt from the last keyframe at or before T plus the
events between it and T, and every viewer is then sent one fresh snapshot
(``on_seek``: the bus's ``resync``). A short step forward with no keyframe
in between is applied as events, like playing.

Sequence numbers are the replay's own and only ever grow, across seeks too:
a viewer never confuses an event of one moment with one of another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from collectors.events import Entity, Event, Logged, Removed, Snapshot, Upserted
from collectors.families import KINDS
from collectors.recording import Recording

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
READ_ONLY = "replay: read-only (this screen shows a recording: no scenarios, no faults)"


class ReplayState:
    """Entities by kind and the recent log, built from a recording's frames."""

    def __init__(self, clock: Callable[[], int], log_size: int = 300) -> None:
        self._clock = clock
        self._entities: dict[str, dict[str, Entity]] = {k: {} for k in KINDS}
        self._log: deque[Logged] = deque(maxlen=log_size)
        self._events: list[Event] = []
        self._seq = 0
        self._log_seen = 0
        """The recorded seq of the last log line applied (keyframes repeat older ones)."""

    # ------------------------------------------------------------------ building

    def load(self, snapshot: Snapshot) -> None:
        """Become exactly this keyframe; nothing is announced (viewers get a snapshot)."""
        self._entities = {k: {e.id: e for e in snapshot.of(k)} for k in KINDS}
        self._log.clear()
        for line in snapshot.log:
            self._log.append(replace(line, seq=self._next()))
        self._log_seen = max([snapshot.seq, *(line.seq for line in snapshot.log)])
        self._events.clear()
        self._next()  # a new state has a new number (viewers and caches key on it)

    def apply(self, item: Event | Snapshot) -> None:
        """One recorded frame, announced as an event (a keyframe as the difference it makes)."""
        if isinstance(item, Snapshot):
            self._converge(item)
        elif isinstance(item, Upserted):
            self._entities[item.entity.KIND][item.entity.id] = item.entity
            self._emit(item)
        elif isinstance(item, Removed):
            if self._entities[item.kind].pop(item.id, None) is not None:
                self._emit(item)
        else:
            self._log_seen = max(self._log_seen, item.seq)
            line = replace(item, seq=self._next())
            self._log.append(line)
            self._events.append(line)

    def _converge(self, snapshot: Snapshot) -> None:
        for kind in KINDS:
            have = self._entities[kind]
            want = {e.id: e for e in snapshot.of(kind)}
            for entity_id in [i for i in have if i not in want]:
                self.apply(Removed(kind=kind, id=entity_id))
            for entity_id, entity in want.items():
                if have.get(entity_id) != entity:
                    self.apply(Upserted(entity=entity))
        for line in snapshot.log:
            if line.seq > self._log_seen:
                self.apply(line)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, event: Upserted | Removed) -> None:
        self._events.append(replace(event, seq=self._next()))

    # ------------------------------------------------------------------ what the bus reads

    def snapshot(self) -> Snapshot:
        return Snapshot(
            seq=self._seq,
            at_ms=self._clock(),
            entities={k: tuple(sorted(es.values(), key=lambda e: e.id)) for k, es in self._entities.items()},
            log=tuple(self._log),
        )

    def drain(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def refresh_counts(self) -> None:
        """Nothing to recompute: the recording carries every change as it happened."""

    def get(self, kind: str, entity_id: str) -> Entity | None:
        return self._entities.get(kind, {}).get(entity_id)

    def entities(self, kind: str) -> list[Entity]:
        return list(self._entities.get(kind, {}).values())

    def counts(self) -> dict[str, int]:
        return {kind: len(es) for kind, es in self._entities.items()}

    def log(self, level: str, source: str, text: str) -> None:
        """A line of the server's own (a viewer dropped), not of the recording."""
        line = Logged(at_ms=self._clock(), level=level, source=source, text=text, seq=self._next())
        self._log.append(line)
        self._events.append(line)


class Replay:
    """The player: a recording, a playhead, play/pause/speed/seek; a source for the bus."""

    def __init__(
        self,
        recording: Recording,
        *,
        speed: float = 1.0,
        playing: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recording = recording
        self.speed = nearest_speed(speed)
        self._clock = clock
        self.state = ReplayState(self.position_ms)
        self._playing = False
        self._pos = recording.start_ms
        self._anchor = clock()
        self._index = 0
        self._on_change: Callable[[], None] = lambda: None
        self._on_seek: Callable[[], None] = lambda: None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._rebuild(recording.start_ms)
        self._playing = playing

    # ------------------------------------------------------------------ wiring

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def set_on_seek(self, callback: Callable[[], None]) -> None:
        self._on_seek = callback

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._anchor = self._clock()
        self._task = asyncio.create_task(self._run(), name=f"replay {self.recording.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ the playhead

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def ended(self) -> bool:
        return not self._playing and self._pos >= self.recording.end_ms

    def position_ms(self) -> int:
        """The recorded moment shown now (wall-clock ms of the recording)."""
        if not self._playing:
            return self._pos
        moved = (self._clock() - self._anchor) * 1000 * self.speed
        return min(self.recording.end_ms, self._pos + int(moved))

    def play(self) -> None:
        if self._playing:
            return
        if self._pos >= self.recording.end_ms:
            self.seek(self.recording.start_ms)  # play at the end starts again
        self._pos, self._anchor, self._playing = self.position_ms(), self._clock(), True
        self._poke()

    def pause(self) -> None:
        if self._playing:
            now = self.position_ms()
            self._advance(now)
            self._pos, self._playing = now, False
            self._poke()

    def toggle(self) -> None:
        self.pause() if self._playing else self.play()

    def set_speed(self, speed: float) -> None:
        self._pos, self._anchor = self.position_ms(), self._clock()
        self.speed = nearest_speed(speed)
        self._poke()

    def faster(self, steps: int = 1) -> None:
        i = SPEEDS.index(self.speed)
        self.set_speed(SPEEDS[max(0, min(len(SPEEDS) - 1, i + steps))])

    def step(self, delta_ms: int) -> None:
        self.seek(self.position_ms() + delta_ms)

    def seek(self, at_ms: int) -> None:
        """Show the recorded moment ``at_ms`` (clamped to the recording)."""
        rec = self.recording
        at_ms = max(rec.start_ms, min(rec.end_ms, int(at_ms)))
        target = rec.index_after(at_ms)
        if target >= self._index and not rec.keyframe_between(self._index, target):
            self._apply_until(target)  # a short step forward: events, as when playing
        else:
            self._rebuild(at_ms)
            self._on_seek()
        self._pos, self._anchor = at_ms, self._clock()
        self._poke()

    def _rebuild(self, at_ms: int) -> None:
        rec = self.recording
        k = rec.keyframe_at(at_ms)
        first = rec.frames[k].item
        assert isinstance(first, Snapshot)
        self.state.load(first)
        self._index = k + 1
        self._apply_until(rec.index_after(at_ms), announce=False)
        self.state.drain()  # viewers get a snapshot of this moment, not the way here

    def _apply_until(self, stop: int, announce: bool = True) -> None:
        frames = self.recording.frames
        applied = stop > self._index
        while self._index < stop:
            self.state.apply(frames[self._index].item)
            self._index += 1
        if applied and announce:
            self._on_change()

    def _advance(self, at_ms: int) -> None:
        self._apply_until(self.recording.index_after(at_ms))

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        frames = self.recording.frames
        while True:
            timeout: float | None = None
            if self._playing:
                now = self.position_ms()
                self._advance(now)
                if now >= self.recording.end_ms:
                    self._pos, self._playing = self.recording.end_ms, False
                    self._on_change()  # let screens see "ended"
                    continue
                # sleep until the next frame is due, or until play/pause/seek/speed wakes us
                due = frames[self._index].at_ms if self._index < len(frames) else self.recording.end_ms
                timeout = max(0.0, (due - now) / 1000 / self.speed)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ for screens

    def status(self) -> dict[str, Any]:
        """What ``GET /api/replay`` answers, and what the TUI's replay bar shows."""
        rec = self.recording
        position = self.position_ms()
        return {
            "mode": "replay",
            "file": rec.name,
            "state": "playing" if self._playing else "ended" if self.ended else "paused",
            "speed": self.speed,
            "speeds": list(SPEEDS),
            "position_ms": position,
            "start_ms": rec.start_ms,
            "end_ms": rec.end_ms,
            "elapsed_ms": position - rec.start_ms,
            "duration_ms": rec.end_ms - rec.start_ms,
            "events": rec.events,
            "keyframes": [rec.frames[i].at_ms for i in rec.keyframes],
            "cut": rec.cut,
            "read_only": READ_ONLY,
        }


def nearest_speed(speed: float) -> float:
    """The offered speed closest to ``speed`` (0.25× … 16×)."""
    return min(SPEEDS, key=lambda s: abs(s - speed))
