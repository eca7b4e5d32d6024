"""Fan-out from the state to every viewer (the TUI, each websocket, a recorder).

Flushing is a leading-edge throttle: the first change after a quiet spell is
flushed at once; under load flushes happen at most every ``interval_s``
(20 ms), each carrying at most one event per entity (the latest wins) plus
the log lines.

Every viewer has a bounded queue of such batches. A viewer that falls
behind by ``max_batches`` loses its queue and gets one fresh snapshot
instead on its next read: a slow browser gets coalesced snapshots and never
blocks the collectors or the other viewers.

Encoding happens once, whatever the number of viewers: each event's JSON is
kept by its sequence number, each flush's batch keeps its own text, and the
snapshot sent on the wire (one page of each kind, :data:`WIRE_PAGE`) is kept
until the state changes — a hundred browsers connecting at once cost one
encoding, and the bytes every viewer gets are the same.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from collectors.events import (
    SCHEMA_VERSION,
    Entity,
    Event,
    Logged,
    Page,
    Removed,
    Snapshot,
    Upserted,
    state_json,
    to_json,
)
from collectors.families import PLURAL

ENCODED_KEPT = 4096
"""Events kept encoded (a viewer that falls further behind gets a snapshot anyway)."""
WIRE_PAGE = Page(limit=300)
"""What a snapshot on the wire carries of each kind (sorted by id); the rest is paged
through ``GET /api/state?kind=...&offset=...``."""


class Batch(list[Event]):
    """One flush's events; its wire text is made once for every viewer that sends it."""

    text: str | None = None

    def __init__(self, events: Iterable[Event], totals: dict[str, int]) -> None:
        super().__init__(events)
        self.low = min((e.seq for e in self), default=0)
        """The lowest sequence number in it."""
        self.totals = totals
        """How many of each kind the state held right after these events, taken at the flush
        (counted when the text is made, a viewer sent it late would be told a later state's
        totals, and take a kind it holds whole for a partial one)."""


Delivery = Snapshot | Batch


class StateView(Protocol):
    """What the bus and the screens read of a state: the live one
    (:class:`collectors.state.State`) or a replay's (:class:`app.replay.ReplayState`)."""

    def snapshot(self) -> Snapshot: ...

    def drain(self) -> list[Event]: ...

    def refresh_counts(self) -> None: ...

    def get(self, kind: str, entity_id: str) -> Entity | None: ...

    def entities(self, kind: str) -> list[Entity]: ...

    def counts(self) -> dict[str, int]: ...

    def log(self, level: str, source: str, text: str) -> None: ...


class Source(Protocol):
    """Where the events come from: the collectors (:class:`collectors.observatory.Observatory`)
    or a recording (:class:`app.replay.Replay`)."""

    @property
    def state(self) -> StateView: ...

    def set_on_change(self, callback: Callable[[], None]) -> None: ...


class Viewer:
    def __init__(self, bus: Bus, max_batches: int) -> None:
        self._bus = bus
        self._queue: deque[Batch] = deque()
        self._max = max_batches
        self._needs_snapshot = True
        self._ready = asyncio.Event()
        self._after_seq = 0
        self.snapshots = 0
        """How many snapshots this viewer was sent (1 + the times it fell behind)."""

    def _push(self, batch: Batch) -> None:
        if self._needs_snapshot:
            return
        if len(self._queue) >= self._max:
            self._queue.clear()
            self._needs_snapshot = True
        else:
            self._queue.append(batch)
        self._ready.set()

    def resync(self) -> None:
        """Ask for a fresh snapshot on the next read (e.g. after a pause)."""
        self._queue.clear()
        self._needs_snapshot = True
        self._ready.set()

    async def get(self) -> Delivery:
        """The next snapshot or batch of events; waits while there is none."""
        while True:
            if self._needs_snapshot:
                self._needs_snapshot = False
                self._queue.clear()
                snapshot = self._bus.snapshot()
                self._after_seq = snapshot.seq
                self.snapshots += 1
                return snapshot
            while self._queue:
                batch = self._queue.popleft()
                if batch.low <= self._after_seq:  # partly in the snapshot already
                    batch = Batch((e for e in batch if e.seq > self._after_seq), batch.totals)
                if batch:
                    return batch
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class Bus:
    def __init__(self, source: Source, interval_s: float = 0.02, max_batches: int = 256) -> None:
        self.source = source
        self.state: StateView = source.state
        self._interval = interval_s
        self._max_batches = max_batches
        self._viewers: set[Viewer] = set()
        self._scheduled = False
        self._last_flush = 0.0
        self.flushes = 0
        self._encoded: OrderedDict[int, str] = OrderedDict()
        self._wire_texts: dict[str, tuple[int, str, str]] = {}
        """Snapshots on the wire, by use: (state number, text before its time, after)."""
        source.set_on_change(self.wake)

    def subscribe(self, max_batches: int | None = None) -> Viewer:
        viewer = Viewer(self, max_batches or self._max_batches)
        self._viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)

    def resync(self) -> None:
        """Every viewer gets a fresh snapshot on its next read (a replay jumped in time): the
        batches queued for them belong to another moment."""
        for viewer in list(self._viewers):
            viewer.resync()

    def encoded(self, event: Event) -> str:
        """An event as JSON text, made once however many viewers send it (its row of cells
        included: the family's columns run once per change, not once per browser)."""
        text = self._encoded.get(event.seq)
        if text is None:
            text = json.dumps(to_json(event))
            self._encoded[event.seq] = text
            while len(self._encoded) > ENCODED_KEPT:
                self._encoded.popitem(last=False)
        return text

    def batch_text(self, batch: Batch) -> str:
        """A batch as one JSON message, made once: ``{"type": "batch", "events": [...],
        "totals": {...}}`` (how many of each kind the state held right after them)."""
        if batch.text is None:
            events = ",".join(self.encoded(e) for e in batch)
            totals = json.dumps({PLURAL[k]: n for k, n in batch.totals.items()})
            batch.text = f'{{"type":"batch","v":{SCHEMA_VERSION},"events":[{events}],"totals":{totals}}}'
        return batch.text

    def snapshot(self) -> Snapshot:
        self.flush()
        return self.state.snapshot()

    def wire_snapshot(self, snapshot: Snapshot | None = None) -> str:
        """The snapshot as sent on the wire (one page of each kind), made once per state."""
        return self._wire("ws", snapshot or self.snapshot(), lambda s: to_json(s, WIRE_PAGE))

    def wire_snapshot_state(self) -> str:
        """``GET /api/state``'s default answer, made once per state."""
        return self._wire("state", self.snapshot(), lambda s: state_json(s, WIRE_PAGE))

    def _wire(self, name: str, snapshot: Snapshot, body: Callable[[Snapshot], dict[str, Any]]) -> str:
        """Encode once per state number; only its time (``at_ms``, which viewers set their
        clocks by: a countdown would be off by the age of the encoding) is made afresh."""
        kept = self._wire_texts.get(name)
        if kept is None or kept[0] != snapshot.seq:
            text = json.dumps(body(snapshot))
            at = text.index('"at_ms": ') + len('"at_ms": ')  # the first is the snapshot's own
            end = at + len(str(snapshot.at_ms))
            kept = self._wire_texts[name] = (snapshot.seq, text[:at], text[end:])
        return f"{kept[1]}{snapshot.at_ms}{kept[2]}"

    def wake(self) -> None:
        """A collector put something new in the state: flush now, or soon."""
        if self._scheduled:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        delay = self._last_flush + self._interval - loop.time()
        if delay <= 0:
            loop.call_soon(self.flush)
        else:
            loop.call_later(delay, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._last_flush = asyncio.get_running_loop().time()
        self.state.refresh_counts()
        events = self.state.drain()
        if not events:
            return
        self.flushes += 1
        latest: dict[tuple[str, str], Event] = {}
        logs: list[Event] = []
        for event in events:
            if isinstance(event, Logged):
                logs.append(event)
                continue
            key = (
                (event.entity.KIND, event.entity.id)
                if isinstance(event, Upserted)
                else (event.kind, event.id)
                if isinstance(event, Removed)
                else ("", "")
            )
            latest.pop(key, None)
            latest[key] = event
        batch = Batch(sorted(latest.values(), key=lambda e: e.seq) + logs, self.state.counts())
        for viewer in list(self._viewers):
            viewer._push(batch)

    async def wait_for(self, predicate: Callable[[StateView], bool], timeout: float) -> bool:
        """Wait until the state satisfies ``predicate`` (checked after every flush)."""
        if predicate(self.state):
            return True
        viewer = self.subscribe()
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.state):
                    await viewer.get()
            return True
        except TimeoutError:
            return False
        finally:
            viewer.close()
