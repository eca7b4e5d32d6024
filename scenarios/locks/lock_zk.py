"""``lock-zk``: N clients, each with its own ZooKeeper session, share one ZooKeeper lock.

Each contender creates an ephemeral sequential znode under
``/coordscope/locks/<run>``; the lowest sequence holds; each other contender
watches the one just before it (``watch=predecessor``) — or, naively, the
whole parent (``watch=parent``: every release wakes every waiter, the herd
effect, counted as wake-ups). Writes to the protected counter are fenced
with the holder's znode ``czxid``.

Faults:

- ``kill-holder``: the holder's process dies; ZooKeeper deletes its node
  when its session times out (``session_ms``) and the next contender wakes.
- ``expire-session``: the holder stalls and meanwhile its session expires
  (as a long GC pause or a partition would): its node is deleted, the next
  contender takes the lock, and the stalled holder resumes still believing it
  holds it — its write carries the old czxid and fencing rejects it.
- ``pause-server``: ZooKeeper itself is stopped (SIGSTOP) for
  ``server_pause_ms``: every client goes SUSPENDED, then reconnects to the
  same session (the pause is shorter than the session timeout).

Invariant: mutual exclusion, and FIFO: the lock is granted in the order the
contenders queued (by sequence number).
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from collectors.events import Verdict
from collectors.kazoo_bridge import KazooBridge
from collectors.layouts import coordscope
from collectors.runs import NEMESIS
from scenarios.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.checker import with_fifo
from scenarios.lockwork import COMMON_PARAMS, FaultPlan, critical_section, judge, with_helpers
from scenarios.primitives.redis_lock import FencedResource
from scenarios.primitives.zk_lock import (
    ZkLock,
    close_sessions,
    expire_session,
    lock_path,
    remove_tree,
    start_sessions,
)

if TYPE_CHECKING:
    from scenarios.runner import RunContext

SPEC = ScenarioSpec(
    name="lock-zk",
    title="ZooKeeper lock (ephemeral sequential nodes)",
    summary="Each client queues an ephemeral sequential znode and watches its predecessor; "
    "ZooKeeper deletes a dead holder's node and wakes the next. Writes are fenced with czxid.",
    invariant="mutual exclusion: no two writes from overlapping holds are accepted; "
    "and FIFO: the lock is granted in queue order",
    params=(
        *COMMON_PARAMS,
        Param(
            "watch",
            "predecessor",
            "predecessor: wake one waiter per release; parent: wake them all (the herd effect)",
            choices=("predecessor", "parent"),
        ),
        Param("session_ms", "4000", "ZooKeeper session timeout of each client", minimum=1000, maximum=60000),
        Param("pause_ms", "1500", "how long expire-session stalls the holder", minimum=100, maximum=30000),
        Param(
            "server_pause_ms",
            "2500",
            "how long pause-server stops ZooKeeper (keep it below session_ms)",
            minimum=100,
            maximum=30000,
        ),
    ),
    faults=(
        FaultSpec("kill-holder", "the holder dies: its node goes when its session times out"),
        FaultSpec(
            "expire-session",
            "the holder stalls and its session expires meanwhile: it still believes it holds the lock",
        ),
        FaultSpec(
            "pause-server",
            "SIGSTOP ZooKeeper for server_pause_ms: every session SUSPENDED, then CONNECTED again",
            needs_local_cluster=True,
        ),
    ),
    show="the chain of contenders, each watching its predecessor; each client's session state",
    sources=("ZooKeeper recipes: Locks", "Kleppmann: fencing with zxid", "Curator: InterProcessMutex"),
)


async def run(ctx: RunContext) -> Verdict:
    if not ctx.env.zookeeper:
        raise ScenarioError("lock-zk needs a ZooKeeper (none is configured)")
    hosts = ctx.env.zookeeper[0].hosts
    masters = ctx.env.masters
    resource_node = masters[1] if len(masters) > 1 else masters[0]
    name = ctx.run_id
    actors = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*actors, NEMESIS] if "pause-server" in ctx.faults else actors)
    ctx.cleanup(resource_node, coordscope.resource_key(name))
    bridge = KazooBridge(asyncio.get_running_loop())
    clients = {actor: _session(ctx, bridge, actor, hosts) for actor in actors}
    try:
        await start_sessions(clients)
    except ConnectionError as exc:
        raise ScenarioError(str(exc)) from None
    plan = FaultPlan(fault_at=ctx.number("fault_at"), scheduled=list(ctx.faults))
    resource = FencedResource(ctx.client(resource_node), name, ctx.choice("fencing") == "on")
    ctx.record(
        "runner",
        "info",
        "start",
        note=f"lock {lock_path(name)} on {hosts}, resource {resource.key} on {resource_node}",
    )
    try:
        work = [_client(ctx, bridge, actor, clients[actor], hosts, name, resource, plan) for actor in actors]
        await with_helpers(ctx, plan.arm, work, _pause_server(ctx, plan))
        verdict = await judge(ctx, lock_path(name), resource)
    finally:
        if ctx.params.get("keep") != "on":
            await remove_tree(bridge, next(iter(clients.values())), lock_path(name))
        await close_sessions(clients)
    return with_fifo(verdict, ctx.history.ops, ctx.choice("watch"))


def _session(ctx: RunContext, bridge: KazooBridge, actor: str, hosts: str) -> KazooClient:
    client = KazooClient(
        hosts=hosts,
        timeout=ctx.number("session_ms") / 1000,
        connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5},
    )

    def record(state: str) -> None:
        ctx.record(actor, "info", "session", value=str(state))

    def narrate(state: str) -> None:  # on a kazoo thread
        bridge.call_soon(record, state)

    client.add_listener(narrate)
    return client


async def _pause_server(ctx: RunContext, plan: FaultPlan) -> None:
    await plan.fired("pause-server")
    cluster = ctx.env.cluster
    if cluster is None:
        return
    ms = ctx.number("server_pause_ms")
    ctx.record(NEMESIS, "info", "fault", value="pause-server", note=f"SIGSTOP zookeeper for {ms} ms")
    await asyncio.to_thread(cluster.pause, "zookeeper")
    try:
        await asyncio.sleep(ms / 1000)
    finally:
        await asyncio.to_thread(cluster.resume, "zookeeper")
    ctx.record(NEMESIS, "info", "heal", value="pause-server", note="SIGCONT zookeeper")


async def _client(
    ctx: RunContext,
    bridge: KazooBridge,
    actor: str,
    client: KazooClient,
    hosts: str,
    name: str,
    resource: FencedResource,
    plan: FaultPlan,
) -> None:
    lock = ZkLock(client, bridge, name, actor, ctx.choice("watch"))

    def watching(predecessor: str) -> None:
        ctx.record(actor, "info", "watch", note=f"watches {predecessor}")

    lock.on_wait = watching

    async def expire(_: str) -> None:
        ctx.record(
            NEMESIS, "info", "fault", value="expire-session", note=f"expire {actor}'s session while it stalls"
        )
        await expire_session(client, hosts)
        ctx.record(NEMESIS, "info", "heal", value="expire-session")

    timeout = max(30.0, 6 * ctx.number("session_ms") / 1000)
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        ctx.record(actor, "invoke", "acquire", key=lock.path)
        try:
            hold = await lock.acquire(timeout=timeout)
        except (KazooException, TimeoutError) as exc:
            ctx.record(actor, "fail", "acquire", key=lock.path, note=f"{type(exc).__name__}")
            continue
        ctx.record(
            actor,
            "ok",
            "acquire",
            key=hold.node,
            fence=hold.czxid,
            value={"seq": hold.seq, "wakeups": hold.wakeups, "requests": hold.requests},
            note=f"seq {hold.seq}, {hold.wakeups} wake-up(s), {hold.requests} request(s)",
        )
        plan.acquired()
        alive = await critical_section(
            ctx,
            actor,
            resource,
            hold.czxid,
            plan,
            pause_ms=ctx.number("pause_ms"),
            on_fault={"expire-session": expire},
        )
        if not alive:
            # A dead process stops heart-beating; ZooKeeper expires its session when
            # the timeout runs out and deletes its node.
            await asyncio.sleep(ctx.number("session_ms") / 1000)
            await expire_session(client, hosts)
            return
        ctx.record(actor, "invoke", "release", key=hold.node)
        try:
            released = await lock.release()
        except KazooException as exc:
            released = False
            ctx.record(actor, "fail", "release", key=hold.node, note=type(exc).__name__)
        else:
            ctx.record(
                actor,
                "ok" if released else "fail",
                "release",
                key=hold.node,
                note="" if released else "our node was gone: the session had expired",
            )
        await asyncio.sleep(random.uniform(0, 0.02))
