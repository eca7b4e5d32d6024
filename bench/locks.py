"""Lock benchmark: coordscope's Redis and ZooKeeper locks against redis-py and kazoo.

Starts its own local cluster (the same code as ``coordscope up``) in a
temporary folder and measures, in one run, on the same servers:

1. uncontended acquire+release per second:
   - coordscope's Redis lock (a Lua acquire that also INCRs the fencing token)
     against redis-py's asyncio ``Lock`` — goal: ratio >= 1.0. Both get the same
     client; ours costs the server ~14 µs more per acquire (a script instead of a
     bare SET), and wins it back on the client: the handle keeps one connection of
     the pool and calls its scripts by SHA without redis-py's ``Script`` wrapper;
   - coordscope's ZooKeeper lock against kazoo's ``Lock`` — goal: >= 1.0;
2. four contenders taking the lock in turn:
   - worst wait and hand-offs to the longest waiter, coordscope's Redis lock
     (waiters woken by the release) against redis-py's ``Lock`` (polls every
     0.1 s) — goal: worst wait <= 25 ms;
   - the same for the ZooKeeper locks — goal: FIFO.

Every loop is bounded in count and time; the cluster is stopped by PID.

    .venv/bin/python -m bench.locks [--seconds 3] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock as KazooLock
from redis.asyncio import Redis
from redis.asyncio.lock import Lock as RedisPyLock

from app.cluster import ClusterInfo, LocalCluster
from bench.lab import interrupted
from collectors.kazoo_bridge import KazooBridge
from collectors.state import now_ms
from scenarios.kit.zk_lock import ZkLock
from scenarios.locks.measure import Contention, Sample, contention, ms_since
from scenarios.locks.redis_lock import Grant, RedisLock

CONTENDERS = 4


ROUNDS = 40
"""Each uncontended comparison alternates this many short rounds of each side and reports
the median of the per-round ratios: the machine's noise (2 shared cores on a VM) then hits
both sides alike. With 6 long rounds the ratio wandered by ±5% from run to run; with 40
short ones, by about ±1%."""


async def alternate(
    ours: Callable[[float], Awaitable[float]], theirs: Callable[[float], Awaitable[float]], seconds: float
) -> tuple[float, float, float]:
    """(our median rate, their median rate, median of the per-round ratios)."""
    mine, others, ratios = [], [], []
    for _ in range(ROUNDS):
        a = await ours(seconds / ROUNDS)
        b = await theirs(seconds / ROUNDS)
        mine.append(a)
        others.append(b)
        ratios.append(a / b)
    return statistics.median(mine), statistics.median(others), statistics.median(ratios)


async def rate(step: Callable[[], Awaitable[None]], seconds: float) -> float:
    """Operations per second of ``step`` run back to back (bounded by time and count)."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds and done < 200_000:
        await step()
        done += 1
    return done / (time.perf_counter() - started)


def thread_rate(step: Callable[[], None], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds and done < 200_000:
        step()
        done += 1
    return done / (time.perf_counter() - started)


# ---------------------------------------------------------------------- Redis


async def redis_uncontended(port: int, seconds: float) -> tuple[float, float, float]:
    client = Redis(port=port, protocol=2)
    ours = RedisLock(client, f"bench-{uuid.uuid4().hex[:6]}", "bench", ttl_ms=10_000)

    async def ours_step() -> None:
        grant = await ours.try_acquire(now_ms())
        assert isinstance(grant, Grant)
        await ours.release(grant)

    theirs = RedisPyLock(client, f"bench:{uuid.uuid4().hex[:6]}:lock", timeout=10)

    async def theirs_step() -> None:
        assert await theirs.acquire(blocking=False)
        await theirs.release()

    await rate(ours_step, 0.3)  # warm up: scripts loaded, connections open
    await rate(theirs_step, 0.3)
    result = await alternate(lambda s: rate(ours_step, s), lambda s: rate(theirs_step, s), seconds)
    await ours.aclose()
    await client.aclose()
    return result


async def contend(worker: Callable[[str, list[Sample], float], Awaitable[None]]) -> Contention:
    samples: list[Sample] = []
    started = time.monotonic()
    await asyncio.gather(*(worker(f"c{i}", samples, started) for i in range(CONTENDERS)))
    return contention(samples)


async def redis_contended(port: int, rounds: int, hold_ms: float) -> tuple[Contention, Contention]:
    name = f"bench-{uuid.uuid4().hex[:6]}"

    async def ours(actor: str, samples: list[Sample], started: float) -> None:
        client = Redis(port=port, protocol=2)
        lock = RedisLock(client, name, actor, ttl_ms=10_000, waiting="signal")
        for _ in range(rounds):
            asked = ms_since(started)
            outcome, attempts = await lock.acquire()

            samples.append(Sample(actor, asked, ms_since(started), 2 * attempts, attempts - 1))
            await asyncio.sleep(hold_ms / 1000)
            await lock.release(outcome)
        await lock.aclose()
        await client.aclose()

    key = f"bench:{uuid.uuid4().hex[:6]}:lock"

    async def theirs(actor: str, samples: list[Sample], started: float) -> None:
        client = Redis(port=port, protocol=2)
        lock = RedisPyLock(client, key, timeout=10, blocking_timeout=60)  # sleep=0.1: its default
        for _ in range(rounds):
            asked = ms_since(started)
            assert await lock.acquire()
            samples.append(Sample(actor, asked, ms_since(started), 0, 0))
            await asyncio.sleep(hold_ms / 1000)
            await lock.release()
        await client.aclose()

    return await contend(ours), await contend(theirs)


# ---------------------------------------------------------------------- ZooKeeper


def kazoo_client(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=15)
    return client


async def zk_uncontended(hosts: str, seconds: float) -> tuple[float, float, float]:
    bridge = KazooBridge(asyncio.get_running_loop())
    client = await asyncio.to_thread(kazoo_client, hosts)
    ours = ZkLock(client, bridge, f"bench-{uuid.uuid4().hex[:6]}", "bench")

    async def ours_step() -> None:
        await ours.acquire(timeout=10)
        await ours.release()

    theirs = KazooLock(client, f"/bench/{uuid.uuid4().hex[:6]}", identifier="bench")

    def theirs_step() -> None:
        theirs.acquire(timeout=10)
        theirs.release()

    await rate(ours_step, 0.3)
    await asyncio.to_thread(thread_rate, theirs_step, 0.3)
    result = await alternate(
        lambda s: rate(ours_step, s), lambda s: asyncio.to_thread(thread_rate, theirs_step, s), seconds
    )
    ours.close()
    await asyncio.to_thread(client.stop)
    await asyncio.to_thread(client.close)
    return result


async def zk_contended(hosts: str, rounds: int, hold_ms: float) -> tuple[Contention, Contention]:
    bridge = KazooBridge(asyncio.get_running_loop())
    name = f"bench-{uuid.uuid4().hex[:6]}"

    async def ours(actor: str, samples: list[Sample], started: float) -> None:
        client = await asyncio.to_thread(kazoo_client, hosts)
        lock = ZkLock(client, bridge, name, actor)
        for _ in range(rounds):
            asked = ms_since(started)
            hold = await lock.acquire(timeout=60)
            samples.append(Sample(actor, asked, ms_since(started), hold.requests + 1, hold.wakeups))
            await asyncio.sleep(hold_ms / 1000)
            await lock.release()
        lock.close()
        await asyncio.to_thread(client.stop)

    path = f"/bench/{uuid.uuid4().hex[:6]}"
    started_at = time.monotonic()
    samples: list[Sample] = []
    guard = threading.Lock()

    def theirs(actor: str) -> None:
        client = kazoo_client(hosts)
        lock = KazooLock(client, path, identifier=actor)
        for _ in range(rounds):
            asked = ms_since(started_at)
            lock.acquire(timeout=60)
            with guard:
                samples.append(Sample(actor, asked, ms_since(started_at), 0, 0))
            time.sleep(hold_ms / 1000)
            lock.release()
        client.stop()

    mine = await contend(ours)
    threads = [threading.Thread(target=theirs, args=(f"k{i}",)) for i in range(CONTENDERS)]
    for t in threads:
        t.start()
    await asyncio.to_thread(_join, threads)
    return mine, contention(samples)


# ---------------------------------------------------------------------- main


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(120)


def line(label: str, value: str) -> None:
    print(f"  {label:<58}{value}")


async def main(seconds: float, rounds: int, hold_ms: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(Path(folder))
        info: ClusterInfo
        info, _ = cluster.up()
        try:
            port = info.member("redis-1").port
            hosts = info.member("zookeeper").address
            ours_r, theirs_r, ratio_r = await redis_uncontended(port, seconds)
            r_ours, r_theirs = await redis_contended(port, rounds, hold_ms)
            ours_z, theirs_z, ratio_z = await zk_uncontended(hosts, seconds)
            z_ours, z_theirs = await zk_contended(hosts, rounds, hold_ms)
        finally:
            cluster.down()
    print(
        f"uncontended acquire+release per second (one client, back to back; median of "
        f"{ROUNDS} alternating rounds):"
    )
    line("coordscope Redis lock (with fencing token)", f"{ours_r:8,.0f}/s")
    line("redis-py asyncio Lock", f"{theirs_r:8,.0f}/s")
    line("ratio (goal >= 1.0)", f"{ratio_r:8.2f}x")
    line("coordscope ZooKeeper lock", f"{ours_z:8,.0f}/s")
    line("kazoo Lock", f"{theirs_z:8,.0f}/s")
    line("ratio (goal >= 1.0)", f"{ratio_z:8.2f}x")
    print(f"{CONTENDERS} contenders x {rounds} acquisitions, holding {hold_ms:g} ms each:")
    for label, c in (
        ("coordscope Redis lock (woken by the release)", r_ours),
        ("redis-py Lock (polls every 0.1 s)", r_theirs),
        ("coordscope ZooKeeper lock", z_ours),
        ("kazoo Lock", z_theirs),
    ):
        line(
            label,
            f"worst wait {c.worst_ms:6.0f} ms  p50 {c.p50_ms:5.0f} ms  "
            f"hand-offs to the longest waiter {100 * c.fifo_share:3.0f}% of {c.handoffs}",
        )
    line(
        "Redis worst wait (goal <= 25 ms above the holds ahead)",
        f"{r_ours.worst_ms:6.0f} ms vs {r_theirs.worst_ms:.0f} ms",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--hold-ms", type=float, default=1.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)  # its server is stopped then too
    try:
        asyncio.run(main(args.seconds, args.rounds, args.hold_ms))
    except KeyboardInterrupt:
        sys.exit("interrupted: its servers are stopped")
