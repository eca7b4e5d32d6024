"""A cancel that lands as an awaited write completes must still stop the task."""

from __future__ import annotations

import asyncio
import sys

import pytest

import collectors  # noqa: F401  (installs the fix on 3.11)
from collectors import aio


async def _cancel_as_it_completes() -> asyncio.Task[None]:
    """Start a task suspended in wait_for, then complete the awaited future and cancel the
    task in the same loop turn: the race CPython #86296 loses on 3.11."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    resumed_after_cancel = asyncio.Event()

    async def worker() -> None:
        await asyncio.wait_for(fut, 5.0)
        resumed_after_cancel.set()
        await asyncio.Event().wait()  # a loop would go on to its next call

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # suspended inside wait_for
    fut.set_result(1)
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert not resumed_after_cancel.is_set(), "the cancel came back as a result"
    return task


async def test_a_cancel_landing_as_the_await_completes_stops_the_task() -> None:
    task = await _cancel_as_it_completes()
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the race is fixed in 3.12's wait_for")
def test_on_311_asyncio_wait_for_is_replaced() -> None:
    assert asyncio.wait_for is aio.wait_for
    assert asyncio.tasks.wait_for is aio.wait_for


async def test_wait_for_still_times_out_and_returns() -> None:
    with pytest.raises(TimeoutError):
        await aio.wait_for(asyncio.sleep(1.0), 0.01)
    with pytest.raises(TimeoutError):
        await aio.wait_for(asyncio.sleep(1.0), 0)
    assert await aio.wait_for(asyncio.sleep(0, result=7), 1.0) == 7
    assert await aio.wait_for(asyncio.sleep(0, result=8), None) == 8
