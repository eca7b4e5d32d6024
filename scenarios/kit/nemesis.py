"""The nemesis: faults that act on the servers of the local cluster, narrated on the
nemesis's lane (a fault window from ``fault`` to ``heal``).

Only the local cluster's processes are ever signalled (a scenario's fault that
needs them is refused elsewhere), and a server brought down is brought back
even when the run ends first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from collectors.runs import NEMESIS

if TYPE_CHECKING:
    from scenarios.kit.context import RunContext


async def outage(ctx: RunContext, fault: str, node: str, down_ms: int, healed: str = "") -> None:
    """SIGKILL a server, and start it again (empty: no persistence) ``down_ms`` later."""
    cluster = ctx.env.cluster
    if cluster is None:
        return
    ctx.record(NEMESIS, "info", "fault", value=fault, note=f"SIGKILL {node}")
    await asyncio.to_thread(cluster.kill, node)
    try:
        await asyncio.sleep(down_ms / 1000)
    finally:  # the actors may be done first and cancel us: the node comes back all the same
        await asyncio.to_thread(cluster.restart, node)
    ctx.record(NEMESIS, "info", "heal", value=fault, note=healed or f"{node} restarted")


async def pause(ctx: RunContext, fault: str, node: str, pause_ms: int) -> None:
    """SIGSTOP a server for ``pause_ms``, then SIGCONT (even when the run ends first)."""
    cluster = ctx.env.cluster
    if cluster is None:
        return
    ctx.record(NEMESIS, "info", "fault", value=fault, note=f"SIGSTOP {node} for {pause_ms} ms")
    await asyncio.to_thread(cluster.pause, node)
    try:
        await asyncio.sleep(pause_ms / 1000)
    finally:
        await asyncio.to_thread(cluster.resume, node)
    ctx.record(NEMESIS, "info", "heal", value=fault, note=f"SIGCONT {node}")
