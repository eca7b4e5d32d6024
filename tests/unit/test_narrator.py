"""A service's batched narration: an explicit flush (before a crash point) returns only
once every op kept before it is stored — also those the background flusher has taken and
is still writing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from scenarios.kit.history import Narrator


class SlowStore:
    """A client whose pipelines are held until ``release`` is set (a slow Redis)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stored: list[str] = []

    def pipeline(self, transaction: bool = False) -> Any:
        store = self

        class Pipe:
            def __init__(self) -> None:
                self.ops: list[str] = []

            def xadd(self, key: str, fields: dict[str, str]) -> None:
                self.ops.append(json.loads(fields["op"])["f"])

            async def execute(self) -> list[str]:
                await store.release.wait()
                store.stored += self.ops
                return self.ops

        return Pipe()


async def test_a_flush_waits_for_the_one_under_way() -> None:
    store = SlowStore()
    narrator = Narrator(store, "r1", "svc", 0.0)  # type: ignore[arg-type]
    narrator.later("svc", "ok", "first")
    narrator.later("svc", "info", "crash-point")
    background = asyncio.create_task(narrator.flush())  # takes both, waits on the store
    await asyncio.sleep(0)
    explicit = asyncio.create_task(narrator.flush())  # the crash point's: nothing left to take
    await asyncio.sleep(0.01)
    assert not explicit.done(), "returned before what the background flush took was stored"
    store.release.set()
    await asyncio.wait_for(asyncio.gather(background, explicit), 1)
    assert store.stored == ["first", "crash-point"]
