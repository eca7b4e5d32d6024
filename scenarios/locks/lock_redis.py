"""``lock-redis``: N clients share one Redis lock around a read-modify-write.

Each client, ``rounds`` times: takes the lock (``SET NX PX`` with a fencing
token; while somebody else holds it, it polls every ``poll_ms`` or is woken
by the release), reads the protected counter, works for ``hold_ms``, writes
the counter + 1 with its fencing token, and releases (Lua compare-and-delete,
or a plain ``DEL``).

The lock lives on the first master, the protected resource on the second
(another service's storage), the narration on the control node. On a Redis
Cluster all three are keys of the cluster, each on its slot's primary; the
lock's name carries a hash tag (``{<run>}``) so that its keys — the lock, its
fencing counter, its waiters — share one slot, as the acquire script needs.

Faults:

- ``pause-holder``: the holder stalls for 1.5×TTL between its read and its
  write, like a GC pause; the lease expires, another client takes the lock,
  and the paused one resumes and writes. Without fencing both writes are
  accepted (mutual exclusion violated, an update lost); with fencing the
  stale write is rejected.
- ``kill-holder``: the holder dies without releasing; the lock frees only
  when its TTL runs out, and nobody can work meanwhile.
- ``kill-node``: the lock's Redis node is killed (SIGKILL) while held, and
  restarted empty ``down_ms`` later: no lock service in between, and the
  fencing counter restarts from 1.
"""

from __future__ import annotations

import asyncio
import random
import time

from collectors.layouts import coordscope
from collectors.redis_keyspace import NETWORK_ERRORS
from collectors.runs import NEMESIS
from collectors.state import now_ms
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.nemesis import outage
from scenarios.kit.scenario import Scenario
from scenarios.locks.lockwork import (
    COMMON_PARAMS,
    critical_section,
    fault_plan,
    read_final,
    record_grant,
    watch_mutex,
)
from scenarios.locks.mutex import check_lock_run
from scenarios.locks.redis_lock import FencedResource, Grant, RedisLock

SPEC = ScenarioSpec(
    name="lock-redis",
    title="Single-node Redis lock",
    summary="Clients take SET NX PX locks around a read-modify-write of a protected counter; "
    "fencing tokens let the counter reject a holder whose lease ran out.",
    invariant="mutual exclusion: no two writes from overlapping holds are accepted",
    params=(
        *COMMON_PARAMS,
        Param("ttl_ms", "1500", "lease (PX) of each grant", minimum=100, maximum=60000),
        Param("poll_ms", "50", "how often a polling waiter retries", minimum=5, maximum=2000),
        Param(
            "waiting",
            "poll",
            "poll: retry every poll_ms (the seed's Redis lock); signal: block "
            "until a release wakes the longest waiter (BLPOP)",
            choices=("poll", "signal"),
        ),
        Param(
            "release",
            "lua",
            "lua: compare-and-delete; del: plain DEL (deletes anyone's lock)",
            choices=("lua", "del"),
        ),
        Param("down_ms", "2000", "how long kill-node keeps the node down", minimum=100, maximum=30000),
    ),
    faults=(
        FaultSpec("pause-holder", "the holder stalls for 1.5×TTL before writing (a GC pause)"),
        FaultSpec("kill-holder", "the holder dies without releasing: the lock frees at TTL"),
        FaultSpec(
            "kill-node",
            "SIGKILL the lock's Redis node, restart it empty after down_ms",
            needs_local_cluster=True,
        ),
    ),
    show="holder, fencing token, TTL counting down, waiters and their polls",
    sources=(
        "redis.io: Distributed Locks with Redis",
        "Kleppmann: How to do distributed locking (fencing tokens)",
    ),
)


async def run(ctx: RunContext) -> None:
    masters = ctx.env.masters
    lock_node = masters[0]
    resource_node = masters[1] if len(masters) > 1 else masters[0]
    name = coordscope.slot_tagged(ctx.run_id) if ctx.env.redis_cluster else ctx.run_id
    actors = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*actors, NEMESIS] if "kill-node" in ctx.faults else actors)
    ctx.cleanup(lock_node, *coordscope.lock_keys(name, actors))
    ctx.cleanup(resource_node, coordscope.resource_key(name))
    plan = fault_plan(ctx)
    resource = FencedResource(ctx.client(resource_node), name, ctx.choice("fencing") == "on")
    where = f"lock {coordscope.lock_key(name)} on {lock_node}, resource {resource.key} on {resource_node}"
    if ctx.env.redis_cluster:
        where = f"lock {coordscope.lock_key(name)} and resource {resource.key} on the Redis Cluster"
    ctx.record("runner", "info", "start", note=where)
    clients = [_client(ctx, actor, lock_node, name, resource, plan) for actor in actors]
    await with_helpers(ctx, plan.arm, clients, _kill_node(ctx, plan, lock_node))
    await read_final(ctx, coordscope.lock_key(name), resource)


async def _kill_node(ctx: RunContext, plan: FaultPlan, node: str) -> None:
    await plan.fired("kill-node")
    await outage(
        ctx, "kill-node", node, ctx.number("down_ms"),
        healed=f"{node} restarted empty (no persistence: its locks and counter are gone)",
    )  # fmt: skip


async def _client(
    ctx: RunContext, actor: str, lock_node: str, name: str, resource: FencedResource, plan: FaultPlan
) -> None:
    ttl = ctx.number("ttl_ms")
    lock = ctx.closing(
        RedisLock(
            ctx.client(lock_node), name, actor, ttl, ctx.choice("waiting"), ctx.number("poll_ms") / 1000
        )
    )
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        grant = await _acquire(ctx, actor, lock)
        if grant is None:
            continue
        plan.step()
        if not await critical_section(ctx, actor, resource, grant.fence, plan, pause_ms=int(ttl * 1.5) + 250):
            return
        await _release(ctx, actor, lock, grant)
        await asyncio.sleep(random.uniform(0, 0.02))


async def _acquire(ctx: RunContext, actor: str, lock: RedisLock) -> Grant | None:
    ctx.record(actor, "invoke", "acquire", key=lock.key)
    attempts = 0
    failing = False
    deadline = time.monotonic() + max(15.0, 8 * lock.ttl_ms / 1000)
    while time.monotonic() < deadline and not ctx.stopping.is_set():
        attempts += 1
        try:
            outcome = await lock.try_acquire(now_ms())
            failing = False
            if isinstance(outcome, Grant):
                record_grant(ctx, actor, lock, outcome, attempts)
                return outcome
            await lock.wait_turn(outcome)

        except NETWORK_ERRORS as exc:
            if not failing:
                ctx.record(
                    actor,
                    "info",
                    "error",
                    key=lock.key,
                    note=f"lock node unreachable ({type(exc).__name__}); retrying",
                )
            failing = True
            await asyncio.sleep(lock.poll_s)
    ctx.record(actor, "fail", "acquire", key=lock.key, note=f"gave up after {attempts} attempt(s)")
    return None


async def _release(ctx: RunContext, actor: str, lock: RedisLock, grant: Grant) -> None:
    ctx.record(actor, "invoke", "release", key=lock.key)
    try:
        if ctx.choice("release") == "lua":
            released = await lock.release(grant)
            note = "" if released else "not ours any more (our lease ran out): left alone"
        else:
            current = await lock.client.get(lock.key)
            released = await lock.release_naive()
            owner = coordscope.parse_lock_value(current) if isinstance(current, bytes) else None
            note = ""
            if owner is not None and owner[0] != actor:
                note = f"DEL deleted {owner[0]}'s lock (fence {owner[1]})!"
        ctx.record(actor, "ok" if released else "fail", "release", key=lock.key, note=note)
    except NETWORK_ERRORS as exc:
        ctx.record(
            actor, "fail", "release", key=lock.key, note=f"lock node unreachable ({type(exc).__name__})"
        )


SCENARIO = Scenario(spec=SPEC, run=run, check=check_lock_run, live=watch_mutex)
