"""When faults strike: given at start (at the ``fault_at``-th step of a scenario) or
injected live from any viewer (through the store), and the nemesis's helpers that
run beside a scenario's actors.

A scenario names its *actor faults* — those that strike an actor at a point of
its own work (a holder paused between its read and its write, a service that
crashes after claiming) — and every other fault is the nemesis's: it waits for
:meth:`FaultPlan.fired` and acts on a server or a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collectors.runs import RUNNER

if TYPE_CHECKING:
    from scenarios.kit.context import RunContext


@dataclass
class FaultPlan:
    """Which faults are due, shared by the actors of one run (in this process)."""

    fault_at: int
    scheduled: list[str]
    """Faults given at start, armed at step number ``fault_at``."""
    actor_faults: tuple[str, ...] = ()
    """Faults that strike the actor at the next step (the rest are the nemesis's)."""
    armed: list[str] = field(default_factory=list)
    """Actor faults waiting for the next actor to reach its point."""
    steps: int = 0
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    def step(self) -> None:
        """One more step (an acquisition, a payment): faults given at start may be due."""
        self.steps += 1
        if self.steps >= self.fault_at and self.scheduled:
            for name in self.scheduled:
                self.arm(name)
            self.scheduled.clear()

    def arm(self, name: str) -> None:
        if name in self.actor_faults:
            self.armed.append(name)
        else:
            self.event(name).set()

    def event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def fired(self, name: str) -> None:
        """Wait until the nemesis fault ``name`` is due."""
        await self.event(name).wait()

    def take(self, *names: str) -> str | None:
        """The first armed actor fault among ``names`` (all when none given), taken."""
        for fault in self.armed:
            if not names or fault in names:
                self.armed.remove(fault)
                return fault
        return None


async def live_faults(ctx: RunContext, arm: Callable[[str], object]) -> None:
    """Faults injected while the run goes (from any viewer, through the store)."""
    while True:
        name = await ctx.live_faults.get()
        ctx.record(RUNNER, "info", "fault-requested", value=name, note="injected while running")
        arm(name)


async def with_helpers(
    ctx: RunContext,
    arm: Callable[[str], object],
    actors: Iterable[Awaitable[None]],
    *helpers: Awaitable[None],
) -> None:
    """Run the actors to the end with live faults (handed to ``arm``) and nemesis
    helpers beside them; the helpers are cancelled when the actors are done."""
    background = [asyncio.ensure_future(live_faults(ctx, arm))]
    background += [asyncio.ensure_future(h) for h in helpers]
    try:
        await asyncio.gather(*actors)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
