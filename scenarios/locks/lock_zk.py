"""``lock-zk``: N clients, each with its own ZooKeeper session, share one ZooKeeper lock.

Each contender creates an ephemeral sequential znode under
``/coordscope/locks/<run>``; the lowest sequence holds; each other contender
watches the one just before it (``watch=predecessor``) — or, naively, the
whole parent (``watch=parent``: every release wakes every waiter, the herd
effect, counted as wake-ups). Writes to the protected counter are fenced
with the holder's znode ``czxid``.

Each client's ZooKeeper session lives in a process of its own
(:mod:`scenarios.locks.zk_contender`), so the faults are real:

- ``kill-holder``: the holder's process is SIGKILLed; its heartbeats stop,
  ZooKeeper expires its session after ``session_ms`` and deletes its node,
  and the next contender wakes.
- ``expire-session``: the holder's process is frozen (SIGSTOP) for longer
  than its session timeout (``session_ms`` + ``pause_ms``), as a long GC pause
  or a partition would: the server expires the session and deletes its node,
  the next contender takes the lock, and the frozen holder resumes (SIGCONT)
  still believing it holds it — its write carries the old czxid and fencing
  rejects it; then its process learns the session was LOST.
- ``pause-server``: ZooKeeper itself is stopped (SIGSTOP) for
  ``server_pause_ms``: every client goes SUSPENDED, then reconnects to the
  same session (the pause is shorter than the session timeout).

Invariant: mutual exclusion, and FIFO: the lock is granted in the order the
contenders queued (by sequence number).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER, Op, Verdict
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.nemesis import pause
from scenarios.kit.scenario import Scenario
from scenarios.kit.zk_lock import lock_path
from scenarios.locks.lockwork import COMMON_PARAMS, critical_section, fault_plan, read_final, watch_mutex
from scenarios.locks.mutex import check_lock_run, with_fifo
from scenarios.locks.redis_lock import FencedResource

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
        Param(
            "pause_ms",
            "1500",
            "how much longer than its session timeout expire-session freezes the holder",
            minimum=500,
            maximum=30000,
        ),
        Param(
            "server_pause_ms",
            "2500",
            "how long pause-server stops ZooKeeper (keep it below session_ms)",
            minimum=100,
            maximum=30000,
        ),
    ),
    faults=(
        FaultSpec("kill-holder", "SIGKILL the holder's process: its node goes when its session times out"),
        FaultSpec(
            "expire-session",
            "SIGSTOP the holder's process past its session timeout: the session expires, "
            "and on SIGCONT it still believes it holds the lock",
        ),
        FaultSpec(
            "pause-server",
            "SIGSTOP ZooKeeper for server_pause_ms: every session SUSPENDED, then CONNECTED again",
            needs_local_cluster=True,
        ),
    ),
    show="the chain of contenders, each watching its predecessor; each client's session state",
    sources=("ZooKeeper recipes: Locks", "Kleppmann: fencing with zxid", "Curator: InterProcessMutex"),
    needs=("zookeeper",),
)


async def run(ctx: RunContext) -> None:
    hosts = ctx.env.zookeeper[0].hosts
    masters = ctx.env.masters
    resource_node = masters[1] if len(masters) > 1 else masters[0]
    name = ctx.run_id
    actors = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*actors, NEMESIS] if set(ctx.faults) - {"kill-holder"} else actors)
    ctx.cleanup(resource_node, coordscope.resource_key(name))
    ctx.cleanup_znode(hosts, lock_path(name))
    args = [
        "--hosts", hosts, "--lock", name, "--watch", ctx.choice("watch"),
        "--session-ms", str(ctx.number("session_ms")),
    ]  # fmt: skip
    await asyncio.gather(
        *(ctx.services.start(a, "zk-lock-client", "scenarios.locks.zk_contender", args) for a in actors)
    )
    plan = fault_plan(ctx)
    resource = FencedResource(ctx.client(resource_node), name, ctx.choice("fencing") == "on")
    http = ctx.closing(Http())
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"lock {lock_path(name)} on {hosts}, resource {resource.key} on {resource_node}",
    )
    work = [_client(ctx, http, actor, resource, plan) for actor in actors]
    await with_helpers(ctx, plan.arm, work, _pause_server(ctx, plan))
    await read_final(ctx, lock_path(name), resource)


async def _pause_server(ctx: RunContext, plan: FaultPlan) -> None:
    await plan.fired("pause-server")
    await pause(ctx, "pause-server", "zookeeper", ctx.number("server_pause_ms"))


async def _client(ctx: RunContext, http: Http, actor: str, resource: FencedResource, plan: FaultPlan) -> None:
    session_ms = ctx.number("session_ms")
    frozen_ms = session_ms + ctx.number("pause_ms")

    async def freeze(_: str) -> None:
        ctx.record(
            NEMESIS,
            "info",
            "fault",
            value="expire-session",
            note=f"SIGSTOP {actor}'s process for {frozen_ms} ms: its session times out meanwhile",
        )
        await ctx.services.pause(actor)
        try:
            await asyncio.sleep(frozen_ms / 1000)
        finally:
            await ctx.services.resume(actor)
        ctx.record(NEMESIS, "info", "heal", value="expire-session", note=f"SIGCONT {actor}")

    timeout = max(30.0, 6 * session_ms / 1000)
    path = lock_path(ctx.run_id)
    for _ in range(ctx.number("rounds")):
        if ctx.stopping.is_set():
            return
        ctx.record(actor, "invoke", "acquire", key=path)
        reply = await http.post(ctx.services.get(actor), "/acquire", {"timeout_s": timeout}, timeout + 5)
        if not reply.ok:
            ctx.record(actor, "fail", "acquire", key=path, note=reply.body.get("error") or reply.error)
            continue
        hold = reply.body
        ctx.record(
            actor,
            "ok",
            "acquire",
            key=str(hold["node"]),
            fence=int(hold["czxid"]),
            data={k: int(hold[k]) for k in ("seq", "wakeups", "requests")},
            note=f"seq {hold['seq']}, {hold['wakeups']} wake-up(s), {hold['requests']} request(s)",
        )
        plan.step()
        alive = await critical_section(
            ctx,
            actor,
            resource,
            int(hold["czxid"]),
            plan,
            pause_ms=frozen_ms,
            on_fault={"expire-session": freeze},
        )
        if not alive:
            # the holder dies for real: its heartbeats stop, its session times out, its node goes
            await ctx.services.kill(actor, "kill-holder: died holding the lock", narrate=False)
            return
        ctx.record(actor, "invoke", "release", key=str(hold["node"]))
        reply = await http.post(ctx.services.get(actor), "/release", {}, 35)
        released = reply.ok and reply.body.get("released") is True
        note = (
            ""
            if released
            else reply.body.get("error") or reply.error or "our node was gone: the session had expired"
        )
        ctx.record(actor, "ok" if released else "fail", "release", key=str(hold["node"]), note=note)
        await asyncio.sleep(random.uniform(0, 0.02))


def _check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    return with_fifo(check_lock_run(ops, params), ops, str(params.get("watch", "predecessor")))


SCENARIO = Scenario(spec=SPEC, run=run, check=_check, live=watch_mutex)
