"""Tasks looping over Redis calls stop when cancelled, whenever the cancel lands."""

from __future__ import annotations

import asyncio
import random

from app.cluster import ClusterInfo
from app.core import environment
from tests.conftest import settings_for

LOOPS = 40
ROUNDS = 4


async def test_blpop_loops_stop_on_cancel_wherever_it_lands(cluster: ClusterInfo) -> None:
    """Before the wait_for fix about one cancel in 80 was swallowed here (redis-py #2028 on
    Python 3.11): the loop ran on and the run that owned it never ended."""
    env = environment(settings_for(cluster), None)
    node = env.masters[0]
    rng = random.Random(7)
    missed = 0

    async def loop() -> None:
        client = env.client(node)  # the runner's settings: a socket timeout, no retries
        try:
            while True:
                await client.blpop(["coordscope:test:cancel"], timeout=0.05)
        finally:
            await client.aclose()

    async def cancel_one() -> None:
        nonlocal missed
        task = asyncio.create_task(loop())
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3.0)
        if not done:
            missed += 1
            task.cancel()

    for _ in range(ROUNDS):
        await asyncio.gather(*(cancel_one() for _ in range(LOOPS)))
    assert missed == 0, f"{missed} of {LOOPS * ROUNDS} cancelled loops kept running"
