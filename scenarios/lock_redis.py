"""``lock-redis``: N clients share one Redis lock around a read-modify-write.

Each client, ``rounds`` times: takes the lock (``SET NX PX`` with a fencing
token, polling every ``poll_ms`` while somebody else holds it), reads the
protected counter, works for ``hold_ms``, writes the counter + 1 with its
fencing token, and releases (Lua compare-and-delete, or a plain ``DEL``).

The lock lives on the first master, the protected resource on the second
(another service's storage), the narration on the control node.

Faults (given at start they hit the ``fault_at``-th acquisition; injected
live they hit the next holder):

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis import exceptions as redis_errors

from collectors.events import Verdict
from collectors.layouts import coordscope
from collectors.runs import CHECKER, NEMESIS
from collectors.state import now_ms
from scenarios.catalogue import FaultSpec, Param, ScenarioSpec
from scenarios.checker import check_mutex, first_overlap
from scenarios.primitives.redis_lock import FencedResource, Grant, RedisLock

if TYPE_CHECKING:
    from scenarios.runner import RunContext

SPEC = ScenarioSpec(
    name="lock-redis",
    title="Single-node Redis lock",
    summary="Clients take SET NX PX locks around a read-modify-write of a protected counter; "
    "fencing tokens let the counter reject a holder whose lease ran out.",
    invariant="mutual exclusion: no two writes from overlapping holds are accepted",
    params=(
        Param("clients", "4", "clients competing for the lock", minimum=2, maximum=16),
        Param("rounds", "5", "acquisitions per client", minimum=1, maximum=50),
        Param("ttl_ms", "1500", "lease (PX) of each grant", minimum=100, maximum=60000),
        Param("hold_ms", "150", "work done inside the critical section", minimum=0, maximum=10000),
        Param("poll_ms", "50", "how often a waiter retries", minimum=5, maximum=2000),
        Param(
            "release",
            "lua",
            "lua: compare-and-delete; del: plain DEL (deletes anyone's lock)",
            choices=("lua", "del"),
        ),
        Param(
            "fencing",
            "on",
            "the resource rejects writes with a lower token than it has seen",
            choices=("on", "off"),
        ),
        Param("fault_at", "2", "which acquisition a fault given at start hits", minimum=1, maximum=100),
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

HOLDER_FAULTS = ("pause-holder", "kill-holder")


@dataclass
class _Shared:
    """What the clients of one run share (in this process only)."""

    fault_at: int
    armed: list[str] = field(default_factory=list)
    """Faults waiting for the next holder."""
    scheduled: list[str] = field(default_factory=list)
    """Faults given at start, armed at acquisition number ``fault_at``."""
    acquisitions: int = 0
    kill_node: asyncio.Event = field(default_factory=asyncio.Event)

    def acquired(self) -> None:
        self.acquisitions += 1
        if self.acquisitions >= self.fault_at and self.scheduled:
            for name in self.scheduled:
                self.arm(name)
            self.scheduled.clear()

    def arm(self, name: str) -> None:
        if name == "kill-node":
            self.kill_node.set()
        else:
            self.armed.append(name)

    def take_holder_fault(self) -> str | None:
        return self.armed.pop(0) if self.armed else None


async def run(ctx: RunContext) -> Verdict:
    masters = ctx.env.masters
    lock_node = masters[0]
    resource_node = masters[1] if len(masters) > 1 else masters[0]
    name = ctx.run_id
    actors = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*actors, NEMESIS] if "kill-node" in ctx.faults else actors)
    ctx.cleanup(
        lock_node, coordscope.lock_key(name), coordscope.fence_key(name), coordscope.waiters_key(name)
    )
    ctx.cleanup(resource_node, coordscope.resource_key(name))
    shared = _Shared(fault_at=ctx.number("fault_at"), scheduled=list(ctx.faults))
    resource = FencedResource(ctx.client(resource_node), name, ctx.choice("fencing") == "on")
    ctx.record(
        "runner",
        "info",
        "start",
        note=f"lock {coordscope.lock_key(name)} on {lock_node}, resource {resource.key} on {resource_node}",
    )
    tasks = [asyncio.create_task(_client(ctx, actor, lock_node, name, resource, shared)) for actor in actors]
    helpers = [
        asyncio.create_task(_live_faults(ctx, shared)),
        asyncio.create_task(_nemesis(ctx, shared, lock_node)),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    totals = await resource.totals()
    ctx.record(
        "runner",
        "ok",
        "read",
        key=resource.key,
        value=str(totals.get("value", 0)),
        note=f"final: {totals.get('writes', 0)} writes accepted, {totals.get('rejected', 0)} rejected",
    )
    return check_mutex(ctx.history.ops, coordscope.lock_key(name), resource.key, totals.get("value", 0))


async def _live_faults(ctx: RunContext, shared: _Shared) -> None:
    while True:
        name = await ctx.live_faults.get()
        ctx.record("runner", "info", "fault-requested", value=name, note="injected while running")
        shared.arm(name)


async def _nemesis(ctx: RunContext, shared: _Shared, node: str) -> None:
    await shared.kill_node.wait()
    cluster = ctx.env.cluster
    if cluster is None:
        return
    ctx.record(NEMESIS, "info", "fault", value="kill-node", note=f"SIGKILL {node}")
    await asyncio.to_thread(cluster.kill, node)
    await asyncio.sleep(ctx.number("down_ms") / 1000)
    await asyncio.to_thread(cluster.restart, node)
    ctx.record(
        NEMESIS,
        "info",
        "heal",
        value="kill-node",
        note=f"{node} restarted empty (no persistence: its locks and counter are gone)",
    )


async def _client(
    ctx: RunContext, actor: str, lock_node: str, name: str, resource: FencedResource, shared: _Shared
) -> None:
    ttl = ctx.number("ttl_ms")
    lock = RedisLock(ctx.client(lock_node), name, actor, ttl)
    poll_s = ctx.number("poll_ms") / 1000
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        grant = await _acquire(ctx, actor, lock, poll_s)
        if grant is None:
            continue
        shared.acquired()
        value = await resource.read()
        ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
        fault = shared.take_holder_fault()
        if fault == "kill-holder":
            ctx.record(actor, "info", "crash", note="died holding the lock: it frees only at TTL")
            return
        if fault == "pause-holder":
            pause_ms = int(ttl * 1.5) + 250
            ctx.record(actor, "info", "pause", note=f"stalls {pause_ms} ms, longer than the {ttl} ms lease")
            await asyncio.sleep(pause_ms / 1000)
            ctx.record(actor, "info", "resume", note="resumes, still believing it holds the lock")
        await asyncio.sleep(ctx.number("hold_ms") / 1000)
        await _write(ctx, actor, resource, value + 1, grant)
        await _release(ctx, actor, lock, grant)
        await asyncio.sleep(random.uniform(0, 0.02))


async def _acquire(ctx: RunContext, actor: str, lock: RedisLock, poll_s: float) -> Grant | None:
    ctx.record(actor, "invoke", "acquire", key=lock.key)
    polls = 0
    failing = False
    deadline = time.monotonic() + max(15.0, 8 * lock.ttl_ms / 1000)
    while time.monotonic() < deadline and not ctx.stopping.is_set():
        try:
            grant = await lock.try_acquire(now_ms())
            failing = False
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            if not failing:
                ctx.record(
                    actor,
                    "info",
                    "error",
                    key=lock.key,
                    note=f"lock node unreachable ({type(exc).__name__}); retrying",
                )
            failing = True
            grant = None
        if grant is not None:
            ctx.record(
                actor,
                "ok",
                "acquire",
                key=lock.key,
                fence=grant.fence,
                ttl_ms=lock.ttl_ms,
                note=f"after {polls} poll(s)",
            )
            return grant
        polls += 1
        await asyncio.sleep(poll_s)
    ctx.record(actor, "fail", "acquire", key=lock.key, note=f"gave up after {polls} poll(s)")
    return None


async def _write(ctx: RunContext, actor: str, resource: FencedResource, value: int, grant: Grant) -> None:
    ctx.record(actor, "invoke", "write", key=resource.key, value=str(value), fence=grant.fence)
    accepted, seen = await resource.write(value, grant.fence, actor)
    if accepted:
        ctx.record(
            actor,
            "ok",
            "write",
            key=resource.key,
            value=str(value),
            fence=grant.fence,
            note=f"accepted (fence {grant.fence})",
        )
    else:
        ctx.record(
            actor,
            "fail",
            "write",
            key=resource.key,
            value=str(value),
            fence=grant.fence,
            note=f"rejected: fence {grant.fence} < {seen} the resource has seen",
        )
    _judge_live(ctx)


def _judge_live(ctx: RunContext) -> None:
    """Mark the first violation on the lanes the moment it happens."""
    if ctx.reported_violation:
        return
    pair = first_overlap(ctx.history.ops)
    if pair is not None:
        ctx.reported_violation = True
        a, b = pair
        ctx.record(
            CHECKER,
            "info",
            "violation",
            value=[a.actor, b.actor],
            note=f"{a.actor} and {b.actor} both wrote while both believed they held the lock",
        )


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
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        ctx.record(
            actor, "fail", "release", key=lock.key, note=f"lock node unreachable ({type(exc).__name__})"
        )
