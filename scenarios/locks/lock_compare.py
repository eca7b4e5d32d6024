"""``lock-compare``: the same contention on a Redis lock and a ZooKeeper lock, side by side.

The seed's comparison: a Redis lock makes waiters try again at intervals,
which costs requests and leaves the order to chance; ZooKeeper queues the
waiters and wakes the next one through a watch. Two groups of clients run at
once — ``redis-N`` on coordscope's Redis lock (polling every ``poll_ms``, or
woken by the release with ``redis_waiting=signal``) and ``zk-N`` on its
ZooKeeper lock — each taking its lock ``rounds`` times around the same short
critical section. The run's table compares requests and wake-ups per
acquisition, the wait (p50, p99, worst) and the share of hand-offs that went
to the client that had waited longest. Both must keep mutual exclusion.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from kazoo.client import KazooClient

from collectors.events import Verdict
from collectors.kazoo_bridge import KazooBridge
from collectors.layouts import coordscope
from scenarios.catalogue import Param, ScenarioError, ScenarioSpec
from scenarios.checker import check_mutex
from scenarios.lockwork import record_grant, write
from scenarios.measure import Contention, Sample, contention, ms_since
from scenarios.primitives.redis_lock import FencedResource, RedisLock
from scenarios.primitives.zk_lock import (
    ZkLock,
    close_sessions,
    lock_path,
    remove_tree,
    start_sessions,
)

if TYPE_CHECKING:
    from scenarios.runner import RunContext

SPEC = ScenarioSpec(
    name="lock-compare",
    title="Redis polling vs ZooKeeper watches",
    summary="The same contention on both locks at once: requests and wake-ups per acquisition, "
    "wait p50/p99/worst, and how fair the hand-offs are.",
    invariant="mutual exclusion on both locks",
    params=(
        Param("clients", "4", "clients per lock", minimum=2, maximum=12),
        Param("rounds", "8", "acquisitions per client", minimum=1, maximum=50),
        Param("hold_ms", "30", "work done while holding", minimum=0, maximum=5000),
        Param(
            "poll_ms",
            "100",
            "how often a Redis waiter polls (redis-py's default is 100)",
            minimum=5,
            maximum=2000,
        ),
        Param(
            "redis_waiting",
            "poll",
            "poll: the seed's Redis lock; signal: woken by the release (BLPOP)",
            choices=("poll", "signal"),
        ),
        Param("watch", "predecessor", "what a ZooKeeper waiter watches", choices=("predecessor", "parent")),
    ),
    faults=(),
    show="both locks side by side; the comparison table",
    sources=("the seed: Redis waiters retry, ZooKeeper notifies through watches",),
)


async def run(ctx: RunContext) -> Verdict:
    if not ctx.env.zookeeper:
        raise ScenarioError("lock-compare needs a ZooKeeper (none is configured)")
    hosts = ctx.env.zookeeper[0].hosts
    masters = ctx.env.masters
    lock_node, resource_node = masters[0], masters[1] if len(masters) > 1 else masters[0]
    n = ctx.number("clients")
    redis_actors = [f"redis-{i + 1}" for i in range(n)]
    zk_actors = [f"zk-{i + 1}" for i in range(n)]
    await ctx.set_actors([*redis_actors, *zk_actors])
    redis_name, zk_name = f"{ctx.run_id}-redis", f"{ctx.run_id}-zk"
    ctx.cleanup(lock_node, *coordscope.lock_keys(redis_name, redis_actors))
    ctx.cleanup(resource_node, coordscope.resource_key(redis_name), coordscope.resource_key(zk_name))
    redis_resource = FencedResource(ctx.client(resource_node), redis_name, fencing=True)
    zk_resource = FencedResource(ctx.client(resource_node), zk_name, fencing=True)
    bridge = KazooBridge(asyncio.get_running_loop())
    sessions = {a: KazooClient(hosts=hosts, timeout=10.0) for a in zk_actors}
    try:
        await start_sessions(sessions)
    except ConnectionError as exc:
        raise ScenarioError(str(exc)) from None
    samples: dict[str, list[Sample]] = {"redis": [], "zk": []}
    started = time.monotonic()
    try:
        await asyncio.gather(
            *(
                _redis_client(ctx, a, lock_node, redis_name, redis_resource, samples["redis"], started)
                for a in redis_actors
            ),
            *(
                _zk_client(ctx, a, sessions[a], bridge, zk_name, zk_resource, samples["zk"], started)
                for a in zk_actors
            ),
        )
    finally:
        if ctx.params.get("keep") != "on":
            await remove_tree(bridge, next(iter(sessions.values())), lock_path(zk_name))
        await close_sessions(sessions)
    redis_stats, zk_stats = contention(samples["redis"]), contention(samples["zk"])
    await ctx.set_table(_table(ctx, redis_stats, zk_stats))
    return await _verdict(ctx, redis_name, zk_name, redis_resource, zk_resource, redis_stats, zk_stats)


async def _redis_client(
    ctx: RunContext,
    actor: str,
    node: str,
    name: str,
    resource: FencedResource,
    samples: list[Sample],
    started: float,
) -> None:
    lock = ctx.closing(
        RedisLock(
            ctx.client(node), name, actor, 5000, ctx.choice("redis_waiting"), ctx.number("poll_ms") / 1000
        )
    )
    waiting = lock.waiting

    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        ctx.record(actor, "invoke", "acquire", key=lock.key)
        asked = ms_since(started)
        outcome, attempts = await lock.acquire()

        # requests: every attempt, plus a BLPOP per wait when woken by signal
        requests = attempts + (attempts - 1 if waiting == "signal" else 0) + 1
        samples.append(Sample(actor, asked, ms_since(started), requests, attempts - 1))
        record_grant(ctx, actor, lock, outcome, attempts)
        await _work(ctx, actor, resource, outcome.fence)
        ctx.record(actor, "invoke", "release", key=lock.key)
        released = await lock.release(outcome)
        ctx.record(actor, "ok" if released else "fail", "release", key=lock.key)
        await asyncio.sleep(random.uniform(0, 0.01))


async def _zk_client(
    ctx: RunContext,
    actor: str,
    client: KazooClient,
    bridge: KazooBridge,
    name: str,
    resource: FencedResource,
    samples: list[Sample],
    started: float,
) -> None:
    lock = ZkLock(client, bridge, name, actor, ctx.choice("watch"))
    try:
        for _ in range(ctx.number("rounds")):
            if ctx.stopping.is_set():
                return
            ctx.record(actor, "invoke", "acquire", key=lock.path)
            asked = ms_since(started)
            hold = await lock.acquire(timeout=60)
            samples.append(Sample(actor, asked, ms_since(started), hold.requests + 1, hold.wakeups))
            ctx.record(
                actor,
                "ok",
                "acquire",
                key=hold.node,
                fence=hold.czxid,
                note=f"seq {hold.seq}, {hold.wakeups} wake-up(s)",
            )
            await _work(ctx, actor, resource, hold.czxid)
            ctx.record(actor, "invoke", "release", key=hold.node)
            released = await lock.release()
            ctx.record(actor, "ok" if released else "fail", "release", key=hold.node)
            await asyncio.sleep(random.uniform(0, 0.01))
    finally:
        lock.close()


async def _work(ctx: RunContext, actor: str, resource: FencedResource, fence: int) -> None:
    value = await resource.read()
    ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
    await asyncio.sleep(ctx.number("hold_ms") / 1000)
    await write(ctx, actor, resource, value + 1, fence)


def _table(ctx: RunContext, r: Contention, z: Contention) -> list[list[str]]:
    redis_head = f"Redis ({ctx.choice('redis_waiting')}" + (
        f" every {ctx.number('poll_ms')} ms)" if ctx.choice("redis_waiting") == "poll" else ")"
    )
    rows = [
        ["", redis_head, f"ZooKeeper (watch {ctx.choice('watch')})"],
        ["acquisitions", str(r.acquisitions), str(z.acquisitions)],
        ["requests / acquisition", f"{r.requests_per:.1f}", f"{z.requests_per:.1f}"],
        ["wake-ups / acquisition", f"{r.wakeups_per:.1f}", f"{z.wakeups_per:.1f}"],
        ["wait p50", f"{r.p50_ms:.0f} ms", f"{z.p50_ms:.0f} ms"],
        ["wait p99", f"{r.p99_ms:.0f} ms", f"{z.p99_ms:.0f} ms"],
        ["worst wait", f"{r.worst_ms:.0f} ms", f"{z.worst_ms:.0f} ms"],
        [
            "hand-offs to the longest waiter",
            f"{100 * r.fifo_share:.0f}% of {r.handoffs}",
            f"{100 * z.fifo_share:.0f}% of {z.handoffs}",
        ],
    ]
    return rows


async def _verdict(
    ctx: RunContext,
    redis_name: str,
    zk_name: str,
    redis_res: FencedResource,
    zk_res: FencedResource,
    r: Contention,
    z: Contention,
) -> Verdict:
    ops = ctx.history.ops
    redis_ops = [op for op in ops if op.actor.startswith("redis-")]
    zk_ops = [op for op in ops if op.actor.startswith("zk-")]
    redis_total = await redis_res.totals()
    zk_total = await zk_res.totals()
    on_redis = check_mutex(
        redis_ops, coordscope.lock_key(redis_name), redis_res.key, redis_total.get("value", 0)
    )
    on_zk = check_mutex(zk_ops, lock_path(zk_name), zk_res.key, zk_total.get("value", 0))
    compare = (
        f"Redis: {r.requests_per:.1f} requests and {r.wakeups_per:.1f} wake-ups per "
        f"acquisition, wait p50 {r.p50_ms:.0f} ms / p99 {r.p99_ms:.0f} ms / worst "
        f"{r.worst_ms:.0f} ms, {100 * r.fifo_share:.0f}% of hand-offs in queue order",
        f"ZooKeeper: {z.requests_per:.1f} requests and {z.wakeups_per:.1f} wake-ups per "
        f"acquisition, wait p50 {z.p50_ms:.0f} ms / p99 {z.p99_ms:.0f} ms / worst "
        f"{z.worst_ms:.0f} ms, {100 * z.fifo_share:.0f}% of hand-offs in queue order",
    )
    for side in (on_redis, on_zk):
        if not side.holds:
            return replace(side, findings=(*side.findings, *compare))
    return Verdict(
        holds=True,
        invariant=SPEC.invariant,
        summary=f"held on both: {on_redis.summary.removeprefix('held: ')} (Redis); "
        f"{on_zk.summary.removeprefix('held: ')} (ZooKeeper)",
        keys=(*on_redis.keys, *on_zk.keys),
        findings=compare,
    )
