"""``lock-redlock``: RedLock over the independent masters (3, or 5 with ``up --masters 5``).

Clients take turns on a RedLock (see ``primitives/redlock.py``); every attempt
is a row of cells, one per master (■ granted, □ denied, ✖ no answer), with
its elapsed time and remaining validity.

Faults (at the ``fault_at``-th acquisition, or the next one when injected live):

- ``kill-minority``: a minority of masters dies (for ``down_ms``): the lock
  still works, on the majority.
- ``restart-without-persistence``: with a minority down, client A gets exactly
  a majority; one master that granted it crashes and restarts empty, the
  minority comes back empty, and client B now gets a majority too: two
  holders — unless ``restart_delay=ttl`` keeps the crashed master down for
  the lock's TTL first (redis.io's delayed restart).
- ``clock-jump``: the same, but instead of a restart one of A's masters has
  its clock jump forward, so A's key there expires at once. Simulated: the
  nemesis cannot move a server's clock, so it sets that key's TTL to 1 ms
  (``PEXPIRE``) — what a clock jumping past the lease would do to it.
- ``pause-during-acquire``: A stalls after its SETs and before it reads the
  replies, longer than the TTL; meanwhile B takes the lock. A compliant
  client (``elapsed_check=on``) sees that no validity is left and discards
  its majority; one that skips the check also "holds": two holders.

The control node (where runs narrate) is never among the masters the faults
kill. There is no fencing token (RedLock makes none), so the resource takes
every write and only the timing decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from redis import exceptions as redis_errors

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.faults import with_helpers
from scenarios.kit.scenario import Scenario
from scenarios.locks.lockwork import read_final, watch_mutex, write
from scenarios.locks.mutex import check_lock_run
from scenarios.locks.redis_lock import FencedResource
from scenarios.locks.redlock import CELL, Attempt, Redlock

SETUP_FAULTS = ("restart-without-persistence", "clock-jump")

SPEC = ScenarioSpec(
    name="lock-redlock",
    title="RedLock over independent masters",
    not_on_redis_cluster="RedLock needs independent masters, and a cluster's primaries each "
    "serve other slots of one keyspace (start the local cluster without --redis-cluster)",
    summary="The lock is held when a majority of independent masters granted it within its "
    "validity. Faults remove a minority, restart a master without persistence, jump a "
    "clock, or stall a client mid-acquire.",
    invariant="mutual exclusion: no two writes from overlapping holds are accepted",
    params=(
        Param("clients", "3", "clients competing for the lock", minimum=2, maximum=8),
        Param("rounds", "6", "acquisitions per client", minimum=1, maximum=30),
        Param("ttl_ms", "2000", "lease on each master", minimum=200, maximum=60000),
        Param("hold_ms", "300", "work done while holding", minimum=0, maximum=10000),
        Param("node_timeout_ms", "50", "how long to wait for each master's reply", minimum=5, maximum=2000),
        Param(
            "elapsed_check",
            "on",
            "off: keep a majority even when the attempt took longer than the lease (a buggy client)",
            choices=("on", "off"),
        ),
        Param(
            "restart_delay",
            "0",
            "0: a crashed master restarts at once; ttl: it stays down "
            "for the lock's TTL first (redis.io's delayed restart)",
            choices=("0", "ttl"),
        ),
        Param("fault_at", "2", "which acquisition a fault given at start hits", minimum=1, maximum=100),
        Param(
            "down_ms", "1500", "how long kill-minority keeps the minority down", minimum=100, maximum=30000
        ),
    ),
    faults=(
        FaultSpec("kill-minority", "a minority of masters dies for down_ms", needs_local_cluster=True),
        FaultSpec(
            "restart-without-persistence",
            "a master that granted the holder restarts empty; another client gets a majority",
            needs_local_cluster=True,
        ),
        FaultSpec(
            "clock-jump",
            "simulated: a master that granted the holder expires its copy at once (PEXPIRE 1 ms), "
            "as a clock jumping ahead would",
            needs_local_cluster=True,
        ),
        FaultSpec(
            "pause-during-acquire",
            "the client stalls between sending its SETs and reading the replies, longer than the TTL",
        ),
    ),
    show="per-master grants as a row of cells per attempt, elapsed time and validity",
    sources=(
        "redis.io: Distributed Locks with Redis (Redlock)",
        "Kleppmann: How to do distributed locking",
        "antirez: Is Redlock safe?",
    ),
)


@dataclass
class _Plan:
    fault_at: int
    scheduled: list[str]
    pending: list[str] = field(default_factory=list)
    acquisitions: int = 0
    rows: list[list[str]] = field(default_factory=list)
    busy: int = 0
    """Attempts that found the lock taken on every master (counted, not listed)."""

    def table(self) -> list[list[str]]:
        """The header and the latest attempts (a run table is bounded)."""
        return self.rows[:1] + self.rows[1:][-199:]

    def next_fault(self) -> str | None:
        """A fault due at the acquisition about to start."""
        if self.scheduled and self.acquisitions + 1 >= self.fault_at:
            self.pending.extend(self.scheduled)
            self.scheduled.clear()
        return self.pending.pop(0) if self.pending else None


async def run(ctx: RunContext) -> None:
    masters = list(ctx.env.masters)
    if len(masters) < 3:
        raise ScenarioError(
            f"lock-redlock needs at least 3 independent masters (this cluster has {len(masters)})"
        )
    control = ctx.env.control_node
    killable = [m for m in masters if m != control]
    minority = (len(masters) - 1) // 2
    name = ctx.run_id
    resource_node = control  # the faults never touch it
    actors = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*actors, NEMESIS])
    for m in masters:
        ctx.cleanup(m, coordscope.lock_key(name))

    ctx.cleanup(resource_node, coordscope.resource_key(name))
    resource = FencedResource(ctx.client(resource_node), name, fencing=False)
    plan = _Plan(fault_at=ctx.number("fault_at"), scheduled=list(ctx.faults))
    plan.rows.append(["t ms", "client", *masters, "granted", "elapsed", "validity", "result"])
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"RedLock on {', '.join(masters)} (quorum {len(masters) // 2 + 1}); resource on {resource_node}",
    )
    nemesis = _Nemesis(ctx, killable, minority)
    try:
        await with_helpers(
            ctx,
            plan.pending.append,  # RedLock takes a fault as its next attempt starts
            [_client(ctx, actor, masters, name, resource, plan, nemesis) for actor in actors],
        )
    finally:
        await nemesis.settle()
        await ctx.set_table(plan.table())
        ctx.record(
            "runner",
            "info",
            "attempts",
            note=f"{len(plan.rows) - 1} attempts listed; {plan.busy} more found the "
            "lock taken on every master",
        )
    await read_final(ctx, coordscope.lock_key(name), resource)


class _Nemesis:
    """Kills, restarts and clock jumps, never on the control node."""

    def __init__(self, ctx: RunContext, killable: list[str], minority: int) -> None:
        self.ctx = ctx
        self.absent = killable[:minority]
        self.killable = killable
        self.background: list[asyncio.Task[None]] = []
        self.killed: set[str] = set()
        """Down by our hand: the only nodes we bring back (not one a user stopped)."""

    async def kill(self, nodes: list[str], why: str) -> None:
        cluster = self.ctx.env.cluster
        assert cluster is not None
        self.ctx.record(NEMESIS, "info", "fault", value="kill", note=f"SIGKILL {', '.join(nodes)}: {why}")
        for node in nodes:
            self.killed.add(node)
            await asyncio.to_thread(cluster.kill, node)

    async def restart(self, nodes: list[str], why: str) -> None:
        cluster = self.ctx.env.cluster
        assert cluster is not None
        for node in nodes:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.restart, node)
                self.killed.discard(node)
        self.ctx.record(NEMESIS, "info", "heal", note=f"{', '.join(nodes)} restarted empty: {why}")

    def later(self, delay_s: float, nodes: list[str], why: str) -> None:
        async def go() -> None:
            await asyncio.sleep(delay_s)
            await self.restart(nodes, why)

        self.background.append(asyncio.create_task(go()))

    async def clock_jump(self, node: str, key: str) -> None:
        client = self.ctx.client(node)
        self.ctx.record(
            NEMESIS,
            "info",
            "fault",
            value="clock-jump",
            note=f"simulated clock jump on {node}: PEXPIRE 1 ms on its copy of the lock, "
            "as a clock jumping past the lease would expire it",
        )
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await client.pexpire(key, 1)
        self.ctx.record(NEMESIS, "info", "heal", value="clock-jump")

    async def settle(self) -> None:
        """Wait for pending restarts, and bring back what we killed that is still down."""
        for task in self.background:
            with contextlib.suppress(Exception):
                await task
        cluster = self.ctx.env.cluster
        if cluster is not None:
            for node in sorted(self.killed):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(cluster.restart, node)  # refuses a running one


async def _client(
    ctx: RunContext,
    actor: str,
    masters: list[str],
    name: str,
    resource: FencedResource,
    plan: _Plan,
    nemesis: _Nemesis,
) -> None:
    ttl = ctx.number("ttl_ms")
    lock = Redlock({m: ctx.client(m) for m in masters}, name, actor, ttl, ctx.number("node_timeout_ms"))
    elapsed_check = ctx.choice("elapsed_check") == "on"
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        fault = plan.next_fault()
        if fault in (*SETUP_FAULTS, "kill-minority"):
            await nemesis.kill(nemesis.absent, "a minority of masters is gone")
            if fault == "kill-minority":
                nemesis.later(ctx.number("down_ms") / 1000, nemesis.absent, "the minority is back")
        ctx.record(actor, "invoke", "acquire", key=lock.key)
        attempt = await _acquire(
            ctx,
            actor,
            lock,
            plan,
            elapsed_check,
            stall_s=1.3 * ttl / 1000 if fault == "pause-during-acquire" else 0.0,
        )
        if attempt is None:
            continue
        plan.acquisitions += 1
        hold_ms = ctx.number("hold_ms")
        if fault in SETUP_FAULTS:
            hold_ms = max(hold_ms, int(ttl * 0.6))  # long enough for another client to get in
            await _strike(ctx, fault, attempt, lock.key, nemesis, ttl)
        value = await resource.read()
        ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
        await asyncio.sleep(hold_ms / 1000)
        await write(ctx, actor, resource, value + 1, None)
        ctx.record(actor, "invoke", "release", key=lock.key)
        kept = await lock.release(attempt)
        ctx.record(
            actor,
            "ok" if kept >= lock.quorum else "fail",
            "release",
            key=lock.key,
            note=f"{kept} of {len(masters)} masters still held our value",
        )
        await asyncio.sleep(random.uniform(0.02, 0.08))


async def _strike(
    ctx: RunContext, fault: str, attempt: Attempt, key: str, nemesis: _Nemesis, ttl: int
) -> None:
    """After A got exactly a majority: bring the minority back empty, then hit one of A's."""
    target = next(
        (n for n in nemesis.killable if attempt.cells.get(n) == "granted" and n not in nemesis.absent), None
    )
    await nemesis.restart(nemesis.absent, "the minority comes back without A's lock")
    if target is None:
        return
    if fault == "clock-jump":
        await nemesis.clock_jump(target, key)
        return
    await nemesis.kill([target], "a master that granted the holder crashes")
    if ctx.choice("restart_delay") == "ttl":
        nemesis.later(ttl / 1000, [target], "delayed restart: it waited out the lock's TTL")
    else:
        await nemesis.restart([target], "restarted at once, without persistence")


async def _acquire(
    ctx: RunContext, actor: str, lock: Redlock, plan: _Plan, elapsed_check: bool, stall_s: float
) -> Attempt | None:
    deadline = time.monotonic() + max(20.0, 10 * lock.ttl_ms / 1000)
    tries = 0
    while time.monotonic() < deadline and not ctx.stopping.is_set():
        tries += 1
        stalled: list[bool] = []

        def stall(stalled: list[bool] = stalled, ms: int = int(stall_s * 1000)) -> None:
            stalled.append(True)
            ctx.record(
                actor, "info", "pause", note=f"won a majority, then stalls {ms} ms before reading the replies"
            )

        attempt = await lock.try_acquire(elapsed_check, stall_s, on_stall=stall)
        if stalled:
            ctx.record(actor, "info", "resume", note="reads the replies")
            stall_s = 0.0

        if _narrate(ctx, actor, lock, plan, attempt):
            await ctx.set_table(plan.table())
        if attempt.held:
            ctx.record(
                actor,
                "ok",
                "acquire",
                key=lock.key,
                ttl_ms=attempt.validity_ms,
                note=f"{attempt.row()} {attempt.granted}/{len(attempt.cells)}, "
                f"validity {attempt.validity_ms} ms, after {tries - 1} attempt(s)",
            )
            return attempt
        await asyncio.sleep(random.uniform(0.02, 0.08))
    ctx.record(actor, "fail", "acquire", key=lock.key, note="gave up")
    return None


def _narrate(ctx: RunContext, actor: str, lock: Redlock, plan: _Plan, attempt: Attempt) -> bool:
    """Record an attempt (op and table row); True when the table is worth publishing now.

    An attempt that found the lock taken everywhere (□□□) says nothing new: it is only
    counted, so the table and the lanes show the attempts where something happened."""
    if not attempt.held and attempt.granted == 0 and "error" not in attempt.cells.values():
        plan.busy += 1
        return False
    quorum = attempt.granted >= lock.quorum
    if attempt.held:
        result = "held" if attempt.validity_ms > 0 else "held (no validity left!)"
    elif quorum:
        result = "discarded: no validity left"
    else:
        result = "no majority"
    op = ctx.record(
        actor,
        "info",
        "attempt",
        key=lock.key,
        value={
            "cells": attempt.cells,
            "elapsed_ms": attempt.elapsed_ms,
            "validity_ms": attempt.validity_ms,
            "held": attempt.held,
        },
        note=f"{attempt.row()} {attempt.granted}/{len(attempt.cells)} {result}",
    )
    plan.rows.append(
        [
            str(op.t_ms),
            actor,
            *(CELL[attempt.cells[node]] for node in attempt.cells),  # one column per master
            f"{attempt.granted}/{len(attempt.cells)}",
            f"{attempt.elapsed_ms} ms",
            f"{attempt.validity_ms} ms",
            result,
        ]
    )
    return len(plan.rows) % 5 == 0 or attempt.held


SCENARIO = Scenario(spec=SPEC, run=run, check=check_lock_run, live=watch_mutex)
