"""kazoo runs on its own threads; coordscope runs on one asyncio loop. This is the bridge.

kazoo's callbacks (watches, session state, request completions) do exactly one
thing: hand the event to the loop with ``call_soon_threadsafe``. Requests go
out with kazoo's ``*_async`` calls, which only queue them, and are awaited on
the loop through :meth:`KazooBridge.result`. Nothing else crosses threads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


class KazooBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Called on a kazoo thread: run ``fn(*args)`` on the loop."""
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                self.loop.call_soon_threadsafe(fn, *args)

    async def result(self, async_result: Any, timeout: float | None = None) -> Any:
        """Await a kazoo ``IAsyncResult`` (its value, or its exception raised here)."""
        future: asyncio.Future[Any] = self.loop.create_future()

        def settle(done: Any) -> None:
            if future.done():
                return
            if done.successful():
                future.set_result(done.value)
            else:
                future.set_exception(done.exception)

        async_result.rawlink(lambda done: self.call_soon(settle, done))
        if timeout is None:
            return await future
        return await asyncio.wait_for(future, timeout)
