"""A cancellation that must not get lost, on Python 3.11.

Python 3.11's ``asyncio.wait_for`` returns the awaited result instead of raising when a
cancel lands in the same loop turn as the awaited thing completes (CPython #86296; 3.12
rebuilt ``wait_for`` on ``asyncio.timeout`` and the race is gone). redis-py awaits every
socket write through ``wait_for`` when a socket timeout is set, so a task looping over Redis
calls can swallow the cancel meant to stop it and run on for ever (redis-py #2028): measured
here, about one cancel in 80 of a task looping on BLPOP, which hung a scenario's end.

On 3.11 ``install()`` puts 3.12's shape of ``wait_for`` in ``asyncio``: an
``asyncio.timeout`` around the await, which tells an outside cancel from its own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

_stdlib_wait_for = asyncio.wait_for


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that never turns a cancel into a result."""
    if timeout is not None and timeout <= 0:
        return await _stdlib_wait_for(aw, timeout)  # cancels before it starts: no race
    async with asyncio.timeout(timeout):
        return await aw


def install() -> None:
    if sys.version_info < (3, 12) and asyncio.wait_for is _stdlib_wait_for:
        patched: Any = wait_for
        asyncio.wait_for = patched
        asyncio.tasks.wait_for = patched
