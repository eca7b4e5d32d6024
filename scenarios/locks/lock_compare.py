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
from collections.abc import Mapping, Sequence
from dataclasses import replace

from kazoo.client import KazooClient

from collectors.kazoo_bridge import KazooBridge
from collectors.layouts import coordscope
from collectors.runs import Op, Verdict
from scenarios.kit.catalogue import Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.scenario import Scenario
from scenarios.kit.zk_lock import ZkLock, close_sessions, lock_path, start_sessions
from scenarios.locks.lockwork import read_final, record_grant, watch_mutex, write
from scenarios.locks.measure import Contention, Sample, contention
from scenarios.locks.mutex import check_mutex, finals
from scenarios.locks.redis_lock import FencedResource, RedisLock

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
    needs=("zookeeper",),
)


async def run(ctx: RunContext) -> None:
    hosts = ctx.env.zookeeper[0].hosts
    masters = ctx.env.masters
    lock_node, resource_node = masters[0], masters[1] if len(masters) > 1 else masters[0]
    n = ctx.number("clients")
    redis_actors = [f"redis-{i + 1}" for i in range(n)]
    zk_actors = [f"zk-{i + 1}" for i in range(n)]
    await ctx.set_actors([*redis_actors, *zk_actors])
    redis_name, zk_name = f"{ctx.run_id}-redis", f"{ctx.run_id}-zk"
    if ctx.env.redis_cluster:  # the lock's keys (lock, waiters, signal) must share a slot
        redis_name = coordscope.slot_tagged(redis_name)
    ctx.cleanup(lock_node, *coordscope.lock_keys(redis_name, redis_actors))
    ctx.cleanup(resource_node, coordscope.resource_key(redis_name), coordscope.resource_key(zk_name))
    ctx.cleanup_znode(hosts, lock_path(zk_name))
    redis_resource = FencedResource(ctx.client(resource_node), redis_name, fencing=True)
    zk_resource = FencedResource(ctx.client(resource_node), zk_name, fencing=True)
    bridge = KazooBridge(asyncio.get_running_loop())
    sessions = {a: KazooClient(hosts=hosts, timeout=10.0) for a in zk_actors}
    try:
        await start_sessions(sessions)
    except ConnectionError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        await asyncio.gather(
            *(_redis_client(ctx, a, lock_node, redis_name, redis_resource) for a in redis_actors),
            *(_zk_client(ctx, a, sessions[a], bridge, zk_name, zk_resource) for a in zk_actors),
        )
    finally:
        await close_sessions(sessions)
    await read_final(ctx, coordscope.lock_key(redis_name), redis_resource)
    await read_final(ctx, lock_path(zk_name), zk_resource)
    ops = ctx.history.ops
    await ctx.set_table(_table(ctx.params, _stats(ops, "redis-"), _stats(ops, "zk-")))


async def _redis_client(ctx: RunContext, actor: str, node: str, name: str, resource: FencedResource) -> None:
    lock = ctx.closing(
        RedisLock(
            ctx.client(node), name, actor, 5000, ctx.choice("redis_waiting"), ctx.number("poll_ms") / 1000
        )
    )
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        asked = ctx.record(actor, "invoke", "acquire", key=lock.key)
        outcome, attempts = await lock.acquire()
        record_grant(ctx, actor, lock, outcome, attempts)
        # requests: every attempt, plus a BLPOP per wait when woken by signal, plus the release
        requests = attempts + (attempts - 1 if lock.waiting == "signal" else 0) + 1
        _sample(ctx, actor, asked, requests, attempts - 1)
        await _work(ctx, actor, resource, outcome.fence)
        ctx.record(actor, "invoke", "release", key=lock.key)
        released = await lock.release(outcome)
        ctx.record(actor, "ok" if released else "fail", "release", key=lock.key)
        await asyncio.sleep(random.uniform(0, 0.01))


async def _zk_client(
    ctx: RunContext, actor: str, client: KazooClient, bridge: KazooBridge, name: str, resource: FencedResource
) -> None:
    lock = ZkLock(client, bridge, name, actor, ctx.choice("watch"))
    try:
        for _ in range(ctx.number("rounds")):
            if ctx.stopping.is_set():
                return
            asked = ctx.record(actor, "invoke", "acquire", key=lock.path)
            hold = await lock.acquire(timeout=60)
            ctx.record(
                actor,
                "ok",
                "acquire",
                key=hold.node,
                fence=hold.czxid,
                note=f"seq {hold.seq}, {hold.wakeups} wake-up(s)",
            )
            _sample(ctx, actor, asked, hold.requests + 1, hold.wakeups)
            await _work(ctx, actor, resource, hold.czxid)
            ctx.record(actor, "invoke", "release", key=hold.node)
            released = await lock.release()
            ctx.record(actor, "ok" if released else "fail", "release", key=hold.node)
            await asyncio.sleep(random.uniform(0, 0.01))
    finally:
        lock.close()


def _sample(ctx: RunContext, actor: str, asked: Op, requests: int, wakeups: int) -> None:
    """What the acquisition cost, for the comparison (judged from the history)."""
    ctx.record(
        actor,
        "info",
        "measure",
        data={"asked_ms": asked.t_ms, "requests": requests, "wakeups": wakeups},
    )


def _stats(ops: Sequence[Op], prefix: str) -> Contention:
    samples = [
        Sample(
            op.actor,
            float(op.data["asked_ms"]),
            float(op.t_ms),
            int(op.data.get("requests", 0)),
            int(op.data.get("wakeups", 0)),
        )
        for op in ops
        if op.f == "measure" and op.actor.startswith(prefix) and "asked_ms" in op.data
    ]
    return contention(samples)


async def _work(ctx: RunContext, actor: str, resource: FencedResource, fence: int) -> None:
    value = await resource.read()
    ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
    await asyncio.sleep(ctx.number("hold_ms") / 1000)
    await write(ctx, actor, resource, value + 1, fence)


def _table(params: Mapping[str, str | int], r: Contention, z: Contention) -> list[list[str]]:
    waiting = str(params["redis_waiting"])
    redis_head = f"Redis ({waiting}" + (f" every {params['poll_ms']} ms)" if waiting == "poll" else ")")
    return [
        ["", redis_head, f"ZooKeeper (watch {params['watch']})"],
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


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """Mutual exclusion on each side, with the two sides' costs side by side."""
    r, z = _stats(ops, "redis-"), _stats(ops, "zk-")
    sides = [
        check_mutex(ops, str(op.data.get("lock", "")), op.key, int(op.data.get("value", 0)))
        for op in finals(ops)
    ]
    if len(sides) != 2:
        raise ValueError(f"expected the final reads of both resources, found {len(sides)}")
    on_redis, on_zk = sides
    compare = (
        f"Redis: {r.requests_per:.1f} requests and {r.wakeups_per:.1f} wake-ups per "
        f"acquisition, wait p50 {r.p50_ms:.0f} ms / p99 {r.p99_ms:.0f} ms / worst "
        f"{r.worst_ms:.0f} ms, {100 * r.fifo_share:.0f}% of hand-offs in queue order",
        f"ZooKeeper: {z.requests_per:.1f} requests and {z.wakeups_per:.1f} wake-ups per "
        f"acquisition, wait p50 {z.p50_ms:.0f} ms / p99 {z.p99_ms:.0f} ms / worst "
        f"{z.worst_ms:.0f} ms, {100 * z.fifo_share:.0f}% of hand-offs in queue order",
    )
    for side in sides:
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


SCENARIO = Scenario(spec=SPEC, run=run, check=check, live=watch_mutex)
