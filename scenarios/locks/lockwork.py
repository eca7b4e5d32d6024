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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collectors.events import Verdict
from collectors.runs import CHECKER
from scenarios.catalogue import Param
from scenarios.checker import check_mutex, first_overlap
from scenarios.primitives.redis_lock import FencedResource, Grant, RedisLock

if TYPE_CHECKING:
    from scenarios.runner import RunContext

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


@dataclass
class FaultPlan:
    """Which faults are due, shared by the clients of one run (in this process)."""

    fault_at: int
    scheduled: list[str]
    """Faults given at start, armed at acquisition number ``fault_at``."""
    armed: list[str] = field(default_factory=list)
    """Holder faults waiting for the next holder."""
    acquisitions: int = 0
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    def acquired(self) -> None:
        self.acquisitions += 1
        if self.acquisitions >= self.fault_at and self.scheduled:
            for name in self.scheduled:
                self.arm(name)
            self.scheduled.clear()

    def arm(self, name: str) -> None:
        if name in HOLDER_FAULTS:
            self.armed.append(name)
        else:
            self.event(name).set()

    def event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def fired(self, name: str) -> None:
        """Wait until the nemesis fault ``name`` is due."""
        await self.event(name).wait()

    def take_holder_fault(self) -> str | None:
        return self.armed.pop(0) if self.armed else None


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
    fault = plan.take_holder_fault()
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
        )
    judge_live(ctx)


def judge_live(ctx: RunContext) -> None:
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


async def live_faults(ctx: RunContext, arm: Callable[[str], object]) -> None:
    """Faults injected while the run goes (from any viewer, through the store)."""
    while True:
        name = await ctx.live_faults.get()
        ctx.record("runner", "info", "fault-requested", value=name, note="injected while running")
        arm(name)


async def judge(ctx: RunContext, lock_key: str, resource: FencedResource) -> Verdict:
    """Read the resource one last time and judge the whole history."""
    totals = await resource.totals()
    ctx.record(
        "runner",
        "ok",
        "read",
        key=resource.key,
        value=str(totals.get("value", 0)),
        note=f"final: {totals.get('writes', 0)} writes accepted, {totals.get('rejected', 0)} rejected",
    )
    return check_mutex(ctx.history.ops, lock_key, resource.key, totals.get("value", 0))


async def with_helpers(
    ctx: RunContext,
    arm: Callable[[str], object],
    clients: Iterable[Awaitable[None]],
    *helpers: Awaitable[None],
) -> None:
    """Run the clients to the end with live faults (handed to ``arm``) and nemesis
    helpers beside them."""
    background = [asyncio.ensure_future(live_faults(ctx, arm))]
    background += [asyncio.ensure_future(h) for h in helpers]
    try:
        await asyncio.gather(*clients)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
