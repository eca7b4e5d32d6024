"""lock-redis end to end on the real cluster: every variant and fault, the CLI's exit codes."""

from __future__ import annotations

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from app.cluster import ClusterInfo, LocalCluster
from app.core import environment
from collectors.families.runs import Run
from collectors.layouts import coordscope
from collectors.state import now_ms
from scenarios.locks.redis_lock import Grant, RedisLock
from scenarios.runner import Environment, LocalRun, Runner
from tests.conftest import (
    LOCAL_NODES,
    cli,
    eventually,
    observing,
    redis_client,
    run_scenario,
    settings_for,
    until,
)

FAST = {"rounds": "3", "hold_ms": "60", "ttl_ms": "600", "poll_ms": "20"}


def env(info: ClusterInfo, cluster: LocalCluster | None) -> Environment:
    return environment(settings_for(info), cluster)


async def run(info: ClusterInfo, cluster: LocalCluster | None, faults: list[str], **params: str) -> LocalRun:
    return await run_scenario(info, cluster, "lock-redis", faults, **{**FAST, **params})


def keys_left(info: ClusterInfo) -> list[bytes]:
    left: list[bytes] = []
    for m in info.masters:
        r = redis.Redis(port=m.port)
        left += [
            k
            for k in r.scan_iter("coordscope:*")
            if not k.startswith((b"coordscope:run:", b"coordscope:history:"))
        ]
    return left


async def test_pause_without_fencing_violates_and_names_both_holders(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run(cluster, local_cluster, ["pause-holder"], fencing="off")
    assert done.status == "violated"
    verdict = done.verdict
    assert verdict is not None and not verdict.holds and len(set(verdict.actors)) == 2
    assert verdict.at_ms is not None and len(verdict.ops) == 4
    assert coordscope.lock_key(done.id) in verdict.keys
    assert any("lost update" in f for f in verdict.findings)
    paused = next(op.actor for op in done.stored if op.f == "pause")
    assert paused in verdict.actors
    assert keys_left(cluster) == []  # the run cleaned up after itself


async def test_pause_with_fencing_rejects_the_stale_write_and_holds(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run(cluster, local_cluster, ["pause-holder"])
    assert done.status == "held"
    ops = done.stored
    paused = next(op.actor for op in ops if op.f == "pause")
    rejected = [op for op in ops if op.f == "write" and op.kind == "fail"]
    assert [op.actor for op in rejected] == [paused]
    assert done.verdict is not None and any("rejected by fencing" in f for f in done.verdict.findings)
    # the paused client's Lua release found someone else's lock and left it alone
    releases = [op for op in ops if op.actor == paused and op.f == "release" and op.kind == "fail"]
    assert releases and "left alone" in releases[0].note


async def test_naive_del_deletes_another_clients_lock(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    # Long holds and fast polls: when the resumed client DELs, somebody is mid-hold and a
    # waiter gets in within a poll, while the victim is still working.
    done = await run(
        cluster,
        local_cluster,
        ["pause-holder"],
        release="del",
        fencing="off",
        rounds="6",
        hold_ms="200",
        poll_ms="10",
    )
    assert done.status == "violated"
    notes = [op.note for op in done.stored if op.f == "release"]
    assert any(n.startswith("DEL deleted client-") for n in notes)


async def test_kill_holder_frees_the_lock_only_at_its_ttl(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run(cluster, local_cluster, ["kill-holder"])
    assert done.status == "held"
    ops = done.stored
    crash = next(op for op in ops if op.f == "crash")
    acquired = [op for op in ops if op.f == "acquire" and op.kind == "ok"]
    crashed_grant = max(op.t_ms for op in acquired if op.actor == crash.actor and op.t_ms <= crash.t_ms)
    next_grant = min(op.t_ms for op in acquired if op.t_ms > crash.t_ms)
    assert next_grant - crashed_grant >= 600 - 50  # nobody got in before the TTL ran out


async def test_kill_node_takes_the_lock_service_away_and_restarts_it(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run(cluster, local_cluster, ["kill-node"], down_ms="500")
    assert done.status == "held"
    ops = done.stored
    assert [op.f for op in ops if op.actor == "nemesis"] == ["fault", "heal"]
    assert any(op.f == "error" and "unreachable" in op.note for op in ops)
    # the fencing counter restarted with the node: the next holder's token is lower than what
    # the resource has seen, its write is rejected, and the checker says why
    assert done.verdict is not None
    assert any("fencing went backwards" in f for f in done.verdict.findings), done.verdict.findings
    assert redis_client(cluster, "redis-1").ping()


async def test_kill_node_needs_the_local_cluster(cluster: ClusterInfo) -> None:
    from scenarios.kit.catalogue import ScenarioError

    with pytest.raises(ScenarioError, match="needs the local cluster"):
        await Runner(env(cluster, None)).start("lock-redis", FAST, ["kill-node"])


async def test_a_fault_injected_while_running_reaches_the_run(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    runner = Runner(env(cluster, local_cluster))
    async with observing(cluster) as bus:
        started = await runner.start("lock-redis", {**FAST, "rounds": "6", "fencing": "off"}, [])
        await until(
            bus,
            lambda st: isinstance(r := st.get("run", started.id), Run) and r.ops > 10,
            "the run to get going",
        )
        await runner.request_fault(started.id, "lock-redis", "pause-holder")
        done = await runner.wait(started.id)
        assert any(op.f == "fault-requested" for op in done.stored)
        assert done.status == "violated"
        # what every viewer sees: the same verdict, read back from the stores
        await until(
            bus,
            lambda st: (
                isinstance(r := st.get("run", started.id), Run)
                and r.status == "violated"
                and r.verdict is not None
            ),
            "the verdict",
        )
        seen = bus.state.get("run", started.id)
        assert isinstance(seen, Run) and seen.verdict == done.verdict
        assert {lane.actor for lane in seen.lanes} >= {"client-1", "client-2"}


def test_cli_exit_codes(cluster: ClusterInfo) -> None:
    fast = [x for k, v in FAST.items() for x in ("--set", f"{k}={v}")]
    violated = cli(cluster, "run", "lock-redis", *fast, "--set", "fencing=off", "--fault", "pause-holder")
    assert violated.returncode == 1, violated.stderr
    assert "VIOLATED" in violated.stdout and "client-" in violated.stdout
    held = cli(cluster, "run", "lock-redis", *fast, "--fault", "pause-holder", "--quiet")
    assert held.returncode == 0, held.stderr
    assert held.stdout.startswith("HELD") and "rejected" in held.stdout
    for bad, message in [
        (["run", "nope"], "unknown scenario 'nope'"),
        (["run", "lock-redis", "--set", "fencing=maybe"], "fencing must be one of"),
        (["run", "lock-redis", "--fault", "boom"], "has no fault 'boom'"),
    ]:
        out = cli(cluster, *bad)
        assert out.returncode == 2 and out.stderr.strip().startswith("coordscope: error: ")
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_state_json_shows_third_party_locks(cluster: ClusterInfo) -> None:
    r = redis_client(cluster)
    lock = r.lock("acct:7:lock", timeout=30)
    assert lock.acquire(blocking=False)
    out = cli(cluster, "state", "--json")
    assert out.returncode == 0, out.stderr
    import json

    state = json.loads(out.stdout)
    (found,) = [lk for lk in state["locks"] if lk["name"] == "acct:7:lock"]
    assert found["holder"] == lock.local.token.decode() and found["layout"] == "redis-py"
    nodes = {n["id"]: n for n in state["nodes"]}
    assert set(nodes) == set(LOCAL_NODES)
    assert nodes["postgres-1"]["status"] == "up" and "polled" in nodes["postgres-1"]["feed"]
    lock.release()


async def test_the_lock_handle_survives_an_emptied_script_cache_and_returns_its_connection(
    cluster: ClusterInfo,
) -> None:
    port = cluster.member("redis-2").port
    client = AsyncRedis(port=port)
    lock = RedisLock(client, "handle-test", "client-x", ttl_ms=5000)
    try:
        grant = await lock.try_acquire(now_ms())
        assert isinstance(grant, Grant) and await lock.release(grant)
        await client.script_flush()  # what a restarted node looks like to a script caller
        again = await lock.try_acquire(now_ms())
        assert isinstance(again, Grant) and again.fence == grant.fence + 1
        assert await lock.extend(again, 4000) and await lock.release(again)
        await client.delete(coordscope.fence_key("handle-test"))
    finally:
        await lock.aclose()
        pool = client.connection_pool
        assert not pool._in_use_connections, "the handle kept its connection after aclose"  # type: ignore[attr-defined]
        await client.aclose()


async def test_a_history_the_store_lost_part_of_gives_no_verdict(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    """The verdict is judged from the stored history: when the store lost operations the
    actors did, the run says so and ends in error instead of judging a partial history."""
    runner = Runner(env(cluster, local_cluster))
    started = await runner.start("lock-redis", {**FAST, "rounds": "6"}, [])
    control = redis.Redis(port=cluster.member(runner.env.control_node).port)
    key = coordscope.history_key(started.id)
    await eventually(lambda: control.xlen(key) >= 6, 10, "the first operations stored")
    (victim,) = control.xrange(key, count=1)
    control.xdel(key, victim[0])
    done = await runner.wait(started.id)
    assert done.status == "error" and done.verdict is None
    assert "the stored history lost" in done.error and "no verdict" in done.error
    assert control.hget(coordscope.run_key(started.id), "status") == b"error"
    control.close()
