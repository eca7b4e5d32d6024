"""What every lock scenario shares: the critical section, the faults that hit a holder,
and the verdict.

Each client, once its lock implementation says it holds the lock, reads the
protected counter, works for ``hold_ms`` and writes the counter + 1 carrying
its fencing token (a Redis fence, a znode's czxid...). The protected resource
(:class:`FencedResource`, on another node: another service's storage) may
reject a token lower than one it has seen. The mutual-exclusion checker then
judges the history (see :mod:`scenarios.checker`).

Faults given at start hit the ``fault_at``-th acquisition; injected live they
hit the next holder. A *holder fault* strikes between the read and the write,
where it hurts: ``pause-holder`` (a GC pause longer than the lease),
``kill-holder`` (the holder dies without releasing), or a scenario's own
(``expire-session`` pauses the holder and expires its ZooKeeper session). Any
other fault is the nemesis's: the scenario waits for :meth:`FaultPlan.fired`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from collectors.runs import CHECKER, RUNNER, Op
from scenarios.kit.catalogue import Param
from scenarios.kit.faults import FaultPlan
from scenarios.locks.mutex import FINAL, MutexMonitor
from scenarios.locks.redis_lock import FencedResource, Grant, RedisLock

if TYPE_CHECKING:
    from scenarios.kit.context import RunContext

HOLDER_FAULTS = ("pause-holder", "kill-holder", "expire-session")

COMMON_PARAMS = (
    Param("clients", "4", "clients competing for the lock", minimum=2, maximum=16),
    Param("rounds", "5", "acquisitions per client", minimum=1, maximum=50),
    Param("hold_ms", "150", "work done inside the critical section", minimum=0, maximum=10000),
    Param(
        "fencing",
        "on",
        "the resource rejects writes with a lower token than it has seen",
        choices=("on", "off"),
    ),
    Param("fault_at", "2", "which acquisition a fault given at start hits", minimum=1, maximum=100),
)


def fault_plan(ctx: RunContext) -> FaultPlan:
    """Faults given at start hit the ``fault_at``-th acquisition; holder faults the holder."""
    return FaultPlan(fault_at=ctx.number("fault_at"), scheduled=list(ctx.faults), actor_faults=HOLDER_FAULTS)


PauseHook = Callable[[str], Awaitable[None]]
"""Called when a holder fault pauses ``actor`` (e.g. to expire its session meanwhile)."""


async def critical_section(
    ctx: RunContext,
    actor: str,
    resource: FencedResource,
    fence: int,
    plan: FaultPlan,
    pause_ms: int,
    on_fault: dict[str, PauseHook] | None = None,
) -> bool:
    """Read, (fault), work, write. False when the actor died in it."""
    value = await resource.read()
    ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
    fault = plan.take()
    if fault == "kill-holder":
        ctx.record(actor, "info", "crash", note="died holding the lock")
        return False
    if fault in ("pause-holder", "expire-session"):
        ctx.record(actor, "info", "pause", note=f"stalls {pause_ms} ms ({fault})")
        hook = (on_fault or {}).get(fault)
        if hook is not None:
            await asyncio.gather(hook(actor), asyncio.sleep(pause_ms / 1000))
        else:
            await asyncio.sleep(pause_ms / 1000)
        ctx.record(actor, "info", "resume", note="resumes, still believing it holds the lock")
    await asyncio.sleep(ctx.number("hold_ms") / 1000)
    await write(ctx, actor, resource, value + 1, fence)
    return True


def record_grant(ctx: RunContext, actor: str, lock: RedisLock, grant: Grant, attempts: int) -> None:
    """The Redis lock's ``ok acquire``, with how many polls or wake-ups it took."""
    verb = "poll(s)" if lock.waiting == "poll" else "wake-up(s)"
    ctx.record(
        actor,
        "ok",
        "acquire",
        key=lock.key,
        fence=grant.fence,
        ttl_ms=lock.ttl_ms,
        note=f"after {attempts - 1} {verb}",
        data={"attempts": attempts},
    )


async def write(ctx: RunContext, actor: str, resource: FencedResource, value: int, fence: int | None) -> None:
    """Write the counter, carrying a fencing token when the lock gives one."""
    ctx.record(actor, "invoke", "write", key=resource.key, value=str(value), fence=fence)
    accepted, seen = await resource.write(value, fence or 0, actor)
    if accepted:
        note = f"accepted (fence {fence})" if fence is not None else "accepted (no fencing token)"
        ctx.record(actor, "ok", "write", key=resource.key, value=str(value), fence=fence, note=note)
    else:
        ctx.record(
            actor,
            "fail",
            "write",
            key=resource.key,
            value=str(value),
            fence=fence,
            note=f"rejected: fence {fence} < {seen} the resource has seen",
            data={"seen": seen},
        )


def watch_mutex(ctx: RunContext) -> None:
    """Judge mutual exclusion live: mark the first violation on the lanes the moment it
    happens (each write costs what the open holds cost)."""
    monitor = MutexMonitor()

    def feed(op: Op) -> None:
        pair = monitor.feed(op)
        if pair is not None:
            a, b = pair
            ctx.record(
                CHECKER,
                "info",
                "violation",
                value=[a.actor, b.actor],
                note=f"{a.actor} and {b.actor} both wrote while both believed they held the lock",
            )

    ctx.history.watchers.append(feed)


async def read_final(ctx: RunContext, lock_key: str, resource: FencedResource) -> None:
    """Read the resource one last time, into the history the checker judges."""
    totals = await resource.totals()
    ctx.record(
        RUNNER,
        "ok",
        FINAL,
        key=resource.key,
        value=str(totals.get("value", 0)),
        note=f"final: {totals.get('writes', 0)} writes accepted, {totals.get('rejected', 0)} rejected",
        data={"lock": lock_key, "value": totals.get("value", 0), **totals},
    )
