"""``lock-failover``: a master/replica failover hands the same Redis lock to a second client.

Redis replication is asynchronous: a master acknowledges a ``SET`` before its
replica has it. If the master dies in between and the replica is promoted,
the lock is gone and a second client takes it (redis.io's warning, step by
step):

1. replication stalls (the replica is stopped: SIGSTOP);
2. ``client-a`` takes the lock on the master and starts its work;
3. the master dies (SIGKILL) before the lock reached the replica;
4. the replica resumes and is promoted (``REPLICAOF NO ONE``);
5. ``client-b``, following the new master, takes the same lock: two holders.
   The fencing counter lives beside the lock, so it was lost too: both hold
   fence 1, and fencing cannot tell them apart.

``wait=1``: the client issues ``WAIT 1 wait_timeout_ms`` after its ``SET`` and
treats a missing acknowledgement as failure — it refuses the lock in step 2,
which narrows the window. It does not close it (fault
``kill-master-after-extend``): a lock that *was* acknowledged is later
extended (a watchdog renewal, which the check does not cover); the renewal
never reaches the replica, the master dies, the promoted replica expires the
lock at its original deadline, and client-b takes it while client-a still
believes it holds it.

Without a fault, the same two clients just take turns on a healthy pair.
Afterwards the cluster is put back as it was: the old master restarted (empty)
and the replica following it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.redis_keyspace import NETWORK_ERRORS
from collectors.runs import NEMESIS, RUNNER
from collectors.state import now_ms
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.scenario import Scenario
from scenarios.locks.lockwork import read_final, watch_mutex, write
from scenarios.locks.mutex import check_lock_run
from scenarios.locks.redis_lock import FencedResource, Grant, RedisLock

A, B = "client-a", "client-b"

SPEC = ScenarioSpec(
    name="lock-failover",
    not_on_redis_cluster="it fails a standalone master over to its replica by hand, and a "
    "Redis Cluster fails over by itself (start the local cluster without --redis-cluster)",
    title="Master/replica failover loses the lock",
    summary="A lock taken on the master is lost when the master dies before replicating it; "
    "the promoted replica grants it again. WAIT after SET narrows the window, not closes it.",
    invariant="mutual exclusion: no two writes from overlapping holds are accepted",
    params=(
        Param(
            "wait",
            "0",
            "1: WAIT for one replica after SET and refuse the lock without it",
            choices=("0", "1"),
        ),
        Param("wait_timeout_ms", "200", "how long WAIT waits for the replica", minimum=1, maximum=5000),
        Param("ttl_ms", "4000", "lease of the lock", minimum=500, maximum=60000),
        Param("hold_ms", "1500", "how long client-a works under the lock", minimum=100, maximum=20000),
        Param(
            "rejoin_ms",
            "2500",
            "how long after the failover the old master is back (as a replica)",
            minimum=0,
            maximum=30000,
        ),
        Param(
            "fencing",
            "on",
            "the resource rejects writes with a lower token than it has seen",
            choices=("on", "off"),
        ),
    ),
    faults=(
        FaultSpec(
            "kill-master",
            "replication stalls, client-a locks, the master dies, the replica is promoted, client-b locks",
            needs_local_cluster=True,
        ),
        FaultSpec(
            "kill-master-after-extend",
            "client-a's lock reached the replica, but its "
            "renewal does not; the master dies; the old deadline passes on the new "
            "master",
            needs_local_cluster=True,
        ),
    ),
    show="the lock's grant on the dead master beside the promoted replica's grant",
    live_faults=False,
    sources=("redis.io: Distributed Locks with Redis (why failover is unsafe)", "redis.io: WAIT"),
)


async def run(ctx: RunContext) -> None:
    env = ctx.env
    cluster = env.cluster
    master = env.masters[0] if env.masters else ""
    replica = next((r for r, m in env.replicas.items() if m == master), None)
    if cluster is None or replica is None:
        raise ScenarioError(
            "lock-failover needs the local cluster's master/replica pair "
            "(coordscope up): it kills and promotes servers"
        )
    resource_node = env.masters[1] if len(env.masters) > 1 else env.masters[0]
    name = ctx.run_id
    await ctx.set_actors([A, B, NEMESIS])
    ctx.cleanup(master, *coordscope.lock_keys(name, [A, B]))

    # (nothing to clean on the replica: it follows the restarted, empty master again)
    ctx.cleanup(resource_node, coordscope.resource_key(name))
    resource = FencedResource(ctx.client(resource_node), name, ctx.choice("fencing") == "on")
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"master {master}, replica {replica}, resource {resource.key} on {resource_node}",
    )
    try:
        if "kill-master" in ctx.faults:
            await _failover_before_replication(ctx, master, replica, resource)
        elif "kill-master-after-extend" in ctx.faults:
            await _failover_after_extend(ctx, master, replica, resource)
        else:
            await _healthy(ctx, master, resource)
    finally:
        await _restore(ctx, master, replica)
    await read_final(ctx, coordscope.lock_key(name), resource)


# ---------------------------------------------------------------------- the two clients


async def _take(ctx: RunContext, actor: str, lock: RedisLock, deadline_s: float) -> Grant | None:
    """Poll for the lock; with wait=1, a grant no replica acknowledged is released and retried."""
    ctx.record(actor, "invoke", "acquire", key=lock.key)
    waited = ctx.choice("wait") == "1"
    deadline = time.monotonic() + deadline_s
    refused = 0
    while time.monotonic() < deadline:
        try:
            if waited:
                outcome, acks = await lock.try_acquire_replicated(now_ms(), 1, ctx.number("wait_timeout_ms"))
            else:
                outcome, acks = await lock.try_acquire(now_ms()), -1
        except NETWORK_ERRORS as exc:
            ctx.record(actor, "info", "error", key=lock.key, note=f"{type(exc).__name__}")
            await asyncio.sleep(0.1)
            continue
        if isinstance(outcome, Grant) and waited and acks < 1:
            refused += 1
            if refused == 1:
                ctx.record(
                    actor,
                    "info",
                    "refused",
                    key=lock.key,
                    fence=outcome.fence,
                    note=f"WAIT 1 {ctx.number('wait_timeout_ms')}: no replica "
                    "acknowledged, so the lock is not taken (retrying)",
                )
            with contextlib.suppress(*NETWORK_ERRORS):
                await lock.release(outcome)
        elif isinstance(outcome, Grant):
            note = "" if not waited else f"WAIT 1: {acks} replica acknowledged"
            ctx.record(
                actor, "ok", "acquire", key=lock.key, fence=outcome.fence, ttl_ms=lock.ttl_ms, note=note
            )
            return outcome
        await asyncio.sleep(0.1)
    why = f"no replica acknowledged {refused} grant(s)" if refused else "the lock stayed taken"
    ctx.record(actor, "fail", "acquire", key=lock.key, note=f"gave up: {why}")
    return None


async def _work_and_release(
    ctx: RunContext, actor: str, lock: RedisLock, grant: Grant, resource: FencedResource, hold_ms: int
) -> None:
    value = await resource.read()
    ctx.record(actor, "ok", "read", key=resource.key, value=str(value))
    await asyncio.sleep(hold_ms / 1000)
    await write(ctx, actor, resource, value + 1, grant.fence)
    ctx.record(actor, "invoke", "release", key=lock.key)
    try:
        released = await lock.release(grant)
        ctx.record(
            actor,
            "ok" if released else "fail",
            "release",
            key=lock.key,
            note="" if released else "not ours any more",
        )
    except NETWORK_ERRORS as exc:
        ctx.record(
            actor,
            "fail",
            "release",
            key=lock.key,
            note=f"the node it locked on is gone ({type(exc).__name__})",
        )
    except redis_errors.ReadOnlyError:
        ctx.record(
            actor,
            "fail",
            "release",
            key=lock.key,
            note="the node it locked on is a replica now: its lock went with the failover",
        )


def _lock(ctx: RunContext, node: str, actor: str) -> RedisLock:
    return ctx.closing(RedisLock(ctx.client(node), ctx.run_id, actor, ctx.number("ttl_ms")))


async def _healthy(ctx: RunContext, master: str, resource: FencedResource) -> None:
    for actor in (A, B, A, B):
        lock = _lock(ctx, master, actor)
        grant = await _take(ctx, actor, lock, 10)
        if grant is not None:
            await _work_and_release(ctx, actor, lock, grant, resource, 200)


# ---------------------------------------------------------------------- the failovers


async def _failover_before_replication(
    ctx: RunContext, master: str, replica: str, resource: FencedResource
) -> None:
    await _stall_replication(ctx, master, replica, "kill-master")
    lock_a = _lock(ctx, master, A)
    grant_a = await _take(ctx, A, lock_a, 1)
    work_a = None
    if grant_a is not None:
        work_a = asyncio.create_task(
            _work_and_release(ctx, A, lock_a, grant_a, resource, ctx.number("hold_ms"))
        )
    await asyncio.sleep(0.2)
    rejoin = await _fail_over(ctx, master, replica, "the lock never reached the replica")
    try:
        lock_b = _lock(ctx, replica, B)
        grant_b = await _take(ctx, B, lock_b, 10)
        if grant_b is not None:
            await _work_and_release(ctx, B, lock_b, grant_b, resource, ctx.number("hold_ms"))
        if work_a is not None:
            await work_a
        await rejoin
    finally:
        await _settle(rejoin, work_a)


async def _failover_after_extend(
    ctx: RunContext, master: str, replica: str, resource: FencedResource
) -> None:
    ttl = ctx.number("ttl_ms")
    lock_a = _lock(ctx, master, A)
    grant_a = await _take(ctx, A, lock_a, 5)
    if grant_a is None:
        return
    await _stall_replication(ctx, master, replica, "kill-master-after-extend")
    ctx.record(A, "invoke", "extend", key=lock_a.key)
    extended = await lock_a.extend(grant_a, 4 * ttl)
    ctx.record(
        A,
        "ok" if extended else "fail",
        "extend",
        key=lock_a.key,
        ttl_ms=4 * ttl,
        note=f"lease renewed to {4 * ttl} ms on {master} (not replicated)",
    )
    value = await resource.read()
    ctx.record(A, "ok", "read", key=resource.key, value=str(value))
    rejoin = await _fail_over(ctx, master, replica, "the renewal never reached the replica")
    try:
        # the promoted replica still has the original deadline; client-b waits for it
        lock_b = _lock(ctx, replica, B)
        grant_b = await _take(ctx, B, lock_b, ttl / 1000 + 10)
        if grant_b is not None:
            value_b = await resource.read()
            ctx.record(B, "ok", "read", key=resource.key, value=str(value_b))
            await write(ctx, B, resource, value_b + 1, grant_b.fence)
        # client-a, still inside its renewed lease as far as it knows, finishes its work
        await write(ctx, A, resource, value + 1, grant_a.fence)
        if grant_b is not None:
            ctx.record(B, "invoke", "release", key=lock_b.key)
            released = await lock_b.release(grant_b)
            ctx.record(B, "ok" if released else "fail", "release", key=lock_b.key)
        await rejoin
    finally:
        await _settle(rejoin)


async def _settle(*tasks: asyncio.Task[None] | None) -> None:
    """On the way out (an error included): stop what still runs, and wait for it."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def _stall_replication(ctx: RunContext, master: str, replica: str, fault: str) -> None:
    """Stop the replica and cut its link, so nothing written from now on can reach it.

    (Stopping it alone is not enough: what the master already sent would wait in the
    replica's socket buffer and be applied the moment it resumes.)"""
    cluster = ctx.env.cluster
    assert cluster is not None
    await asyncio.to_thread(cluster.pause, replica)
    await ctx.client(master).client_kill_filter(_type="replica")
    ctx.record(
        NEMESIS,
        "info",
        "fault",
        value=fault,
        note=f"replication stalls: {replica} stopped, its link from {master} cut",
    )


async def _fail_over(ctx: RunContext, master: str, replica: str, why: str) -> asyncio.Task[None]:
    """What Sentinel does: promote the replica; the old master comes back later as its
    replica (the returned task)."""
    cluster = ctx.env.cluster
    assert cluster is not None
    ctx.record(NEMESIS, "info", "fault", value="kill-master", note=f"SIGKILL {master}: {why}")
    await asyncio.to_thread(cluster.kill, master)
    await asyncio.to_thread(cluster.resume, replica)
    promoted = ctx.client(replica)
    await _until_answers(promoted)
    await promoted.replicaof("NO", "ONE")
    ctx.record(
        NEMESIS,
        "info",
        "heal",
        value="kill-master",
        note=f"{replica} promoted (REPLICAOF NO ONE): clients follow it",
    )
    return asyncio.create_task(_rejoin(ctx, master, replica))


async def _rejoin(ctx: RunContext, master: str, replica: str) -> None:
    """Some time later (``rejoin_ms``) the old master is back, empty, as the new one's replica.
    Until then the store still shows its last grant, beside the promoted replica's."""
    cluster = ctx.env.cluster
    assert cluster is not None
    await asyncio.sleep(ctx.number("rejoin_ms") / 1000)
    await asyncio.to_thread(cluster.restart, master)
    if await _follow(ctx, master, replica):
        ctx.record(NEMESIS, "info", "rejoin", note=f"{master} restarted empty, now a replica of {replica}")
    else:
        ctx.record(
            NEMESIS, "info", "rejoin", note=f"{master} restarted empty; its sync with {replica} timed out"
        )


async def _follow(ctx: RunContext, follower: str, leader: str, timeout_s: float = 15.0) -> bool:
    """Make ``follower`` replicate ``leader`` and wait until the link is up."""
    target = ctx.env.target(leader)
    client = ctx.client(follower)
    await _until_answers(client)
    await client.replicaof(target.host, target.port)
    return await _in_sync(ctx, leader, timeout_s)


async def _in_sync(ctx: RunContext, leader: str, timeout_s: float = 15.0) -> bool:
    """Wait until ``leader`` has a replica online (it answers WAIT from then on)."""
    client = ctx.client(leader)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await client.info("replication")
        if any(
            isinstance(v, dict) and v.get("state") == "online"
            for k, v in info.items()
            if k.startswith("slave")
        ):
            return True
        await asyncio.sleep(0.05)
    return False


async def _until_answers(client: Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()
            return
        except NETWORK_ERRORS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _restore(ctx: RunContext, master: str, replica: str) -> None:
    """Put the pair back: the old master a master again, the replica following it."""
    cluster = ctx.env.cluster
    assert cluster is not None
    with contextlib.suppress(Exception):
        await asyncio.to_thread(cluster.resume, replica)
    with contextlib.suppress(Exception):  # it may be running already
        await asyncio.to_thread(cluster.restart, master)
    first = ctx.client(master)
    await _until_answers(first)
    await first.replicaof("NO", "ONE")
    if await _follow(ctx, replica, master):
        ctx.record(RUNNER, "info", "restored", note=f"{replica} follows {master} again")
    else:
        ctx.record(RUNNER, "info", "restore-failed", note=f"{replica} did not resync in 15 s")


SCENARIO = Scenario(spec=SPEC, run=run, check=check_lock_run, live=watch_mutex)
