"""lock-zk, lock-failover, lock-redlock and lock-compare end to end on the real cluster."""

from __future__ import annotations

import asyncio

import redis

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.locks import Lock
from collectors.families.runs import Run
from collectors.state import State
from scenarios.runner import LocalRun
from tests.conftest import observing, redis_client, run_scenario, until, zk_client

ZK_FAST = {"rounds": "3", "hold_ms": "60"}
REDLOCK_FAST = {"ttl_ms": "1500", "hold_ms": "200", "rounds": "6"}
REDLOCK_SECOND_IN = {**REDLOCK_FAST, "node_timeout_ms": "250"}
"""For a fault whose violation needs a second client to win the masters while the first still
holds: each of its tries reconnects to a restarted master, and on a loaded machine 50 ms per
master was once too short for every try of the hold (a clock-jump run held in CI)."""


def ops_of(run: LocalRun, f: str) -> list[str]:
    return [op.note for op in run.stored if op.f == f]


def no_leftovers(info: ClusterInfo) -> None:
    for m in info.masters:
        r = redis.Redis(port=m.port)
        left = [
            k
            for k in r.scan_iter("coordscope:*")
            if not k.startswith((b"coordscope:run:", b"coordscope:history:"))
        ]
        assert left == [], f"{m.name} still holds {left}"
    zk = zk_client(info)
    try:
        # the run created /coordscope/locks/<run> under the parent; it removed its own
        assert zk.exists("/coordscope/locks") is not None
        assert zk.get_children("/coordscope/locks") == []
    finally:
        zk.stop()
        zk.close()


# ---------------------------------------------------------------------- lock-zk


async def test_zk_lock_is_exclusive_and_fifo(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    done = await run_scenario(cluster, local_cluster, "lock-zk", [], **ZK_FAST)
    assert done.status == "held", done.error
    assert done.verdict is not None and "FIFO" in done.verdict.invariant
    assert any("watch=predecessor" in f for f in done.verdict.findings)
    no_leftovers(cluster)


async def test_zk_expired_session_is_fenced_by_czxid(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    fenced = await run_scenario(cluster, local_cluster, "lock-zk", ["expire-session"], **ZK_FAST)
    assert fenced.status == "held", fenced.error
    ops = fenced.stored
    paused = next(op.actor for op in ops if op.f == "pause")
    assert [op.actor for op in ops if op.f == "write" and op.kind == "fail"] == [paused]
    assert any(op.actor == paused and op.f == "session" and op.value == "LOST" for op in ops)
    unfenced = await run_scenario(
        cluster, local_cluster, "lock-zk", ["expire-session"], fencing="off", **ZK_FAST
    )
    assert unfenced.status == "violated"
    assert unfenced.verdict is not None and len(set(unfenced.verdict.actors)) == 2


async def test_zk_parent_watch_wakes_the_herd(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    def wakeups(run: LocalRun) -> float:
        assert run.verdict is not None
        line = next(f for f in run.verdict.findings if "wake-ups (" in f)
        return float(line.split("(")[1].split(" ")[0])

    herd = await run_scenario(cluster, local_cluster, "lock-zk", [], watch="parent", clients="5", **ZK_FAST)
    calm = await run_scenario(cluster, local_cluster, "lock-zk", [], clients="5", **ZK_FAST)
    assert herd.status == calm.status == "held"
    assert wakeups(herd) > 1.5 * wakeups(calm)


async def test_zk_holder_killed_and_server_paused(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    killed = await run_scenario(
        cluster, local_cluster, "lock-zk", ["kill-holder"], session_ms="1500", **ZK_FAST
    )
    assert killed.status == "held", killed.error
    # a real process died: nobody got the lock until ZooKeeper timed its session out
    crash = next(op for op in killed.stored if op.f == "crash")
    grants = [op for op in killed.stored if op.f == "acquire" and op.kind == "ok" and op.index > crash.index]
    assert grants and grants[0].actor != crash.actor
    assert grants[0].t_ms - crash.t_ms >= 1000, (crash, grants[0])
    assert not any(op.actor == crash.actor for op in grants)
    # kazoo pings every third of the session timeout: a 2 s pause of a 3 s session is seen
    paused = await run_scenario(
        cluster,
        local_cluster,
        "lock-zk",
        ["pause-server"],
        session_ms="3000",
        server_pause_ms="2000",
        **ZK_FAST,
    )

    assert paused.status == "held", paused.error
    states = [op.value for op in paused.stored if op.f == "session"]
    assert "SUSPENDED" in states  # the clients saw the server go away, and came back
    run = paused.stored
    assert [op.f for op in run if op.actor == "nemesis"] == ["fault", "heal"]


# ---------------------------------------------------------------------- lock-failover


def replica_follows_master(info: ClusterInfo) -> bool:
    replication = redis_client(info, "replica-1").info("replication")
    return (
        replication["role"] == "slave"
        and replication["master_port"] == info.member("redis-1").port
        and replication["master_link_status"] == "up"
    )


async def test_failover_before_replication_gives_two_holders(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    def split(st: State) -> bool:
        return any(
            isinstance(lk, Lock) and lk.split and {"client-a", "client-b"} <= set(lk.holders)
            for lk in st.entities("lock")
        )

    async with observing(cluster) as bus:
        # while the old master is down, its last grant still stands beside the promoted
        # replica's: the screens show the lock split between the two clients
        seen_split = asyncio.create_task(until(bus, split, "a lock held by both clients", timeout=30))
        done = await run_scenario(cluster, local_cluster, "lock-failover", ["kill-master"])
        await seen_split
        assert done.status == "violated", done.error
        assert done.verdict is not None and set(done.verdict.actors) == {"client-a", "client-b"}
        assert any("fencing could not tell them apart" in f for f in done.verdict.findings)
        # every viewer saw the same verdict, read back from the stores
        await until(
            bus,
            lambda st: isinstance(r := st.get("run", done.id), Run) and r.status == "violated",
            "the verdict in the state",
            timeout=10,
        )
    assert replica_follows_master(cluster)  # the pair is put back afterwards


async def test_wait_narrows_the_window_but_does_not_close_it(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    refused = await run_scenario(cluster, local_cluster, "lock-failover", ["kill-master"], wait="1")
    assert refused.status == "held", refused.error
    assert any("no replica acknowledged" in n for n in ops_of(refused, "refused"))
    assert replica_follows_master(cluster)
    window = await run_scenario(
        cluster,
        local_cluster,
        "lock-failover",
        ["kill-master-after-extend"],
        wait="1",
        fencing="off",
        ttl_ms="1500",
    )
    assert window.status == "violated", window.error
    assert ops_of(window, "extend")
    assert replica_follows_master(cluster)


async def test_failover_without_a_fault_takes_turns(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run_scenario(cluster, local_cluster, "lock-failover", [])
    assert done.status == "held" and replica_follows_master(cluster)


# ---------------------------------------------------------------------- lock-redlock


async def test_redlock_survives_a_dead_minority(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    done = await run_scenario(
        cluster, local_cluster, "lock-redlock", ["kill-minority"], down_ms="800", **REDLOCK_FAST
    )
    assert done.status == "held", done.error
    assert any("✖" in n for n in ops_of(done, "attempt"))  # a dead master in the cells
    assert next(op.note for op in done.stored if op.actor == "nemesis").startswith("SIGKILL redis-1")


async def test_redlock_restart_without_persistence_and_its_delayed_restart(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    unsafe = await run_scenario(
        cluster, local_cluster, "lock-redlock", ["restart-without-persistence"], **REDLOCK_SECOND_IN
    )
    assert unsafe.status == "violated", unsafe.verdict and unsafe.verdict.findings
    assert unsafe.verdict is not None and len(set(unsafe.verdict.actors)) == 2
    delayed = await run_scenario(
        cluster,
        local_cluster,
        "lock-redlock",
        ["restart-without-persistence"],
        restart_delay="ttl",
        **REDLOCK_FAST,
    )
    assert delayed.status == "held", delayed.error


async def test_redlock_clock_jump(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    done = await run_scenario(cluster, local_cluster, "lock-redlock", ["clock-jump"], **REDLOCK_SECOND_IN)
    assert done.status == "violated", done.verdict and done.verdict.findings


async def test_redlock_pause_during_acquire_needs_the_elapsed_check(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    compliant = await run_scenario(
        cluster,
        local_cluster,
        "lock-redlock",
        ["pause-during-acquire"],
        rounds="8",
        **{k: v for k, v in REDLOCK_FAST.items() if k != "rounds"},
    )
    assert compliant.status == "held", compliant.error
    assert any("discarded: no validity left" in n for n in ops_of(compliant, "attempt"))
    buggy = await run_scenario(
        cluster,
        local_cluster,
        "lock-redlock",
        ["pause-during-acquire"],
        elapsed_check="off",
        rounds="8",
        **{k: v for k, v in REDLOCK_FAST.items() if k != "rounds"},
    )
    assert buggy.status == "violated", buggy.error
    assert any("no validity left!" in n for n in ops_of(buggy, "attempt"))


async def test_redlock_attempts_are_published_as_a_table(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        done = await run_scenario(
            cluster, local_cluster, "lock-redlock", [], rounds="2", ttl_ms="1500", hold_ms="50"
        )
        await until(
            bus,
            lambda st: (
                isinstance(r := st.get("run", done.id), Run) and r.status == "held" and len(r.table) > 4
            ),
            "the attempts table",
        )
        run = bus.state.get("run", done.id)
        assert isinstance(run, Run)
        assert run.table[0][:5] == ("t ms", "client", "redis-1", "redis-2", "redis-3")
        assert all(len(row) == len(run.table[0]) for row in run.table)
        assert all(set(row[2:5]) <= set("■□✖") for row in run.table[1:])


# ---------------------------------------------------------------------- lock-compare


async def test_compare_polling_redis_with_zookeeper_watches(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run_scenario(cluster, local_cluster, "lock-compare", [], rounds="6", hold_ms="20")
    assert done.status == "held", done.error
    assert done.verdict is not None
    redis_line, zk_line = done.verdict.findings[:2]
    share = {
        line.split(":")[0]: int(line.split("% of hand-offs")[0].rsplit(", ", 1)[1])
        for line in (redis_line, zk_line)
    }
    assert share["ZooKeeper"] >= 80  # queued: the longest waiter goes next
    assert share["ZooKeeper"] > share["Redis"]  # polling leaves the order to chance
    # the two locks guard two resources: a Redis holder and a ZooKeeper holder at once is no violation
    assert ops_of(done, "violation") == []
    no_leftovers(cluster)
