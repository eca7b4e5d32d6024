"""``coordscope record``: the bus's stream, written down as a recording.

The recorder is one more viewer of the bus. It writes what it is given —
a snapshot first, then batches of events — one line each
(:func:`collectors.recording.recording_line`), and flushes after every
delivery, so a recorder killed at any moment leaves a file whose lines are
all whole but perhaps the last (which the reader drops).

Every ``keyframe_s`` seconds it also writes a fresh snapshot of the bus, a
keyframe, so that a player can seek without replaying from the start.
Events still queued for the recorder when a keyframe is taken are already
in it: those up to the keyframe's ``seq`` are skipped, so no log line is
written twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from app.bus import Bus
from collectors.events import Snapshot
from collectors.recording import recording_line


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Recorded:
    events: int = 0
    keyframes: int = 0


async def record(
    bus: Bus,
    out: TextIO,
    stop: asyncio.Event,
    *,
    seconds: float | None = None,
    keyframe_s: float = 30.0,
    clock: Callable[[], int] = wall_ms,
) -> Recorded:
    """Record until ``stop`` is set or ``seconds`` have passed."""
    done = Recorded()
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    next_keyframe = loop.time() + keyframe_s
    skip_upto = 0
    viewer = bus.subscribe()
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            now = loop.time()
            if deadline is not None and now >= deadline:
                break
            if now >= next_keyframe:
                snapshot = bus.snapshot()  # flushes first: what it holds is queued behind it
                out.write(recording_line(snapshot, clock()))
                out.flush()
                done.keyframes += 1
                skip_upto = snapshot.seq
                next_keyframe = now + keyframe_s
            wait = next_keyframe - now if deadline is None else min(next_keyframe, deadline) - now
            getting = asyncio.create_task(viewer.get())
            finished, _ = await asyncio.wait(
                {getting, stopping}, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
            )
            if getting not in finished:
                getting.cancel()
                continue
            delivery = getting.result()
            at = clock()
            if isinstance(delivery, Snapshot):
                out.write(recording_line(delivery, at))
                done.keyframes += 1
                skip_upto = delivery.seq
            else:
                for event in delivery:
                    if event.seq > skip_upto:
                        out.write(recording_line(event, at))
                        done.events += 1
            out.flush()
    finally:
        stopping.cancel()
        viewer.close()
    return done
