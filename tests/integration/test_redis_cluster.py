"""A Redis Cluster started by `coordscope up --redis-cluster`, followed live by the
collectors: roles and slots on the node panel, and a lock that a manual failover, the
SIGKILL of its primary and the move of its slot to another primary never lose, never
show twice and never leave stale."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis

from app import config
from app.cluster import ClusterInfo, LocalCluster, alive
from collectors.events import Removed
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.families.nodes import Node
from collectors.observatory import Observatory
from collectors.redis_cluster import parse_nodes
from collectors.state import State
from tests.conftest import cli_in, cluster_up, eventually, wait_until

ROOT = Path(__file__).resolve().parents[2]
LOCK_KEY = "{order-7}:lock"
LOCK_ID = f"redis:{LOCK_KEY}"
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, ClusterInfo]]:
    """`coordscope up --redis-cluster` in a state folder of its own; `down` at the end must
    stop exactly the processes it started."""
    with cluster_up(tmp_path_factory.mktemp("redis-cluster"), "--redis-cluster") as up:
        yield up


def client(info: ClusterInfo, name: str) -> redis.Redis:
    return redis.Redis(port=info.member(name).port, socket_timeout=5, decode_responses=True)


def any_client(info: ClusterInfo) -> redis.Redis:
    """A client of a cluster member that is running (a test may have killed one)."""
    name = next(m.name for m in info.members if m.cluster and alive(m))
    return client(info, name)


def owner(info: ClusterInfo, key: str) -> str:
    """The member that serves ``key``'s slot now (the cluster's own view)."""
    c = any_client(info)
    slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
    for n in parse_nodes(str(c.execute_command("CLUSTER", "NODES"))):
        if n.is_primary and any(a <= slot <= b for a, b in n.slots):
            return name_at(info, n.address)
    raise AssertionError(f"no primary serves slot {slot}")


def replica_of(info: ClusterInfo, primary: str) -> str:
    c = client(info, primary)
    my_id = str(c.execute_command("CLUSTER", "MYID"))
    for n in parse_nodes(str(c.execute_command("CLUSTER", "NODES"))):
        if n.primary_id == my_id and not n.failed:
            return name_at(info, n.address)
    raise AssertionError(f"{primary} has no replica")


def name_at(info: ClusterInfo, address: str) -> str:
    return next(m.name for m in info.members if m.address == address)


def cluster_ok(info: ClusterInfo) -> bool:
    for m in info.members:
        if not m.cluster:
            continue
        try:
            if "cluster_state:ok" not in str(client(info, m.name).execute_command("CLUSTER", "INFO")):
                return False
        except redis.RedisError:
            return False
    return True


def write_lock(info: ClusterInfo) -> None:
    rc = redis.RedisCluster(host="127.0.0.1", port=info.member(owner(info, LOCK_KEY)).port)
    try:
        assert rc.set(LOCK_KEY, TOKEN, px=60000)
        rc.set("{order-7}:note", "hello")
    finally:
        rc.close()


@asynccontextmanager
async def observing(info: ClusterInfo) -> AsyncIterator[tuple[Observatory, State]]:
    obs = Observatory(info.redis_targets(), [], scan_interval_s=0.5)
    await obs.start()
    try:
        assert not await obs.wait_synced(15)
        yield obs, obs.state
    finally:
        await obs.stop()


def node(st: State, name: str) -> Node:
    n = st.node(name)
    assert n is not None
    return n


def lock_on(st: State, primary: str) -> bool:
    """The lock is listed once, fresh, with its one grant on ``primary``."""
    lk = st.get("lock", LOCK_ID)
    return (
        isinstance(lk, Lock)
        and lk.holder == TOKEN
        and not lk.stale
        and lk.nodes == (primary,)
        and [g.node for g in lk.grants] == [primary]
    )


def removed(st: State, kind: str, entity_id: str) -> list[Removed]:
    return [e for e in st.drain() if isinstance(e, Removed) and (e.kind, e.id) == (kind, entity_id)]


async def test_up_starts_a_cluster_the_node_panel_shows_with_its_slots(
    redis_cluster: tuple[LocalCluster, ClusterInfo],
) -> None:
    _, info = redis_cluster
    names = [m.name for m in info.members if m.cluster]
    assert names == [f"cluster-{i}" for i in range(1, 7)]
    assert not any(m.name.startswith(("redis-", "replica-")) for m in info.members)
    assert cluster_ok(info)
    for m in info.members:
        if m.cluster:
            conf = Path(m.dir) / "nodes.conf"
            assert conf.exists(), f"{m.name} keeps its cluster config in its own folder"
    write_lock(info)
    async with observing(info) as (_, st):
        await eventually(lambda: lock_on(st, owner(info, LOCK_KEY)), 10, "the lock on its primary")
        for i in (1, 2, 3):
            n = node(st, f"cluster-{i}")
            assert n.role == "master" and n.master is None and n.cluster == "cluster"
        assert {node(st, f"cluster-{i}").slots for i in (1, 2, 3)} == {
            "0-5460 (5461)",
            "5461-10922 (5462)",
            "10923-16383 (5461)",
        }
        for i, primary in ((4, 1), (5, 2), (6, 3)):
            n = node(st, f"cluster-{i}")
            assert (n.role, n.master, n.slots) == ("replica", f"cluster-{primary}", "")
        # a raw key is the cluster's, not its primary's; its replica's copy is the same row
        note = st.get("key", "redis:cluster:{order-7}:note")
        assert isinstance(note, RawKey) and note.node == owner(info, LOCK_KEY)
        lk = st.get("lock", LOCK_ID)
        assert isinstance(lk, Lock)
        (grant,) = lk.grants
        assert [(r.node, r.present) for r in grant.replicas] == [(replica_of(info, grant.node), True)]
    status = cli_in(Path(info.state_dir), "status")
    assert status.returncode == 0 and all(f"{n} " in status.stdout for n in names)


def test_a_cluster_coordscope_did_not_start_is_found_from_one_seed(
    redis_cluster: tuple[LocalCluster, ClusterInfo], tmp_path: Path
) -> None:
    """`--redis URL --redis-cluster`: every node, from the seed's CLUSTER NODES (redis-py
    parses that command's reply into a dict when asked for it as one word: none was found)."""
    _, info = redis_cluster
    seed = next(m for m in info.members if m.cluster and alive(m))
    settings = config.load(
        redis_urls=[f"redis://127.0.0.1:{seed.port}"], redis_cluster=True, state_dir=str(tmp_path)
    )
    ports = sorted(t.port for t in settings.redis)
    assert ports == sorted(m.port for m in info.members if m.cluster)
    assert {t.cluster for t in settings.redis} == {f"127.0.0.1:{seed.port}"}
    with pytest.raises(config.ConfigError, match="cannot read the Redis Cluster topology"):
        config.load(redis_urls=["redis://127.0.0.1:1"], redis_cluster=True, state_dir=str(tmp_path))


async def test_a_manual_failover_swaps_the_roles_and_keeps_the_lock(
    redis_cluster: tuple[LocalCluster, ClusterInfo],
) -> None:
    _, info = redis_cluster
    write_lock(info)
    primary = owner(info, LOCK_KEY)
    replica = replica_of(info, primary)
    async with observing(info) as (_, st):
        await eventually(lambda: lock_on(st, primary), 10, "the lock on its primary")
        slots = node(st, primary).slots
        st.drain()
        assert client(info, replica).execute_command("CLUSTER", "FAILOVER") in ("OK", b"OK", True)

        def swapped() -> bool:
            new, old = node(st, replica), node(st, primary)
            return (
                (new.role, new.master, new.slots) == ("master", None, slots)
                and (old.role, old.master, old.slots) == ("replica", replica, "")
                and lock_on(st, replica)
            )

        await eventually(swapped, 15, f"{replica} shown primary of {slots}, {primary} its replica")
        assert removed(st, "lock", LOCK_ID) == [], "the lock never left the screen"
        lk = st.get("lock", LOCK_ID)
        assert isinstance(lk, Lock)
        assert [(r.node, r.present, r.same_value) for r in lk.grants[0].replicas] == [(primary, True, True)]


async def test_a_killed_primary_is_shown_down_and_its_lock_moves_to_the_promoted_replica(
    redis_cluster: tuple[LocalCluster, ClusterInfo],
) -> None:
    cluster, info = redis_cluster
    write_lock(info)
    primary = owner(info, LOCK_KEY)
    replica = replica_of(info, primary)
    copy = client(info, replica)
    copy.execute_command("READONLY")  # a replica serves its primary's keys to this client
    wait_until(lambda: copy.get(LOCK_KEY) == TOKEN, 5, "the replica to hold the lock")
    async with observing(info) as (_, st):
        await eventually(lambda: lock_on(st, primary), 10, "the lock on its primary")
        st.drain()
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, primary)  # SIGKILL by PID
        await eventually(lambda: node(st, primary).status == "down", 5, f"{primary} shown down")
        assert st.get("lock", LOCK_ID) is not None
        await eventually(
            lambda: node(st, replica).role == "master" and lock_on(st, replica),
            30,
            f"{replica} promoted by the cluster and the lock shown there, not stale",
        )
        took = time.monotonic() - killed_at
        print(f"\nSIGKILL of {primary} -> {replica} shown primary with the lock: {took:.1f} s")
        dead = node(st, primary)
        assert dead.status == "down" and dead.as_of_ms is not None and dead.slots == ""
        assert removed(st, "lock", LOCK_ID) == []
        assert node(st, replica).slots != ""

        # the killed node comes back empty and rejoins as a replica of the new primary
        await asyncio.to_thread(cluster.restart, primary)
        await eventually(
            lambda: (n := node(st, primary)).status == "up" and n.master == replica and lock_on(st, replica),
            30,
            f"{primary} back as a replica of {replica}",
        )
    await asyncio.to_thread(wait_until, lambda: cluster_ok(info), 30, "cluster_state:ok everywhere")


async def test_a_resharded_slot_moves_the_lock_without_losing_it(
    redis_cluster: tuple[LocalCluster, ClusterInfo],
) -> None:
    _, info = redis_cluster
    await asyncio.to_thread(wait_until, lambda: cluster_ok(info), 30, "cluster_state:ok everywhere")
    write_lock(info)
    source = owner(info, LOCK_KEY)
    src = client(info, source)
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", LOCK_KEY))
    view = parse_nodes(str(src.execute_command("CLUSTER", "NODES")))
    target = next(
        name_at(info, n.address)
        for n in view
        if n.is_primary and n.slots and not n.failed and name_at(info, n.address) != source
    )
    dst = client(info, target)
    ids = {name_at(info, n.address): n.node_id for n in view}
    async with observing(info) as (_, st):
        await eventually(
            lambda: lock_on(st, source) and st.get("key", "redis:cluster:{order-7}:note"),
            10,
            "the lock and the note",
        )
        st.drain()
        moved_at = time.monotonic()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        assert sorted(keys) == ["{order-7}:lock", "{order-7}:note"]
        src.execute_command("MIGRATE", "127.0.0.1", info.member(target).port, "", 0, 5000, "KEYS", *keys)
        for c in (dst, src):
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        await eventually(lambda: lock_on(st, target), 10, f"the lock on {target}")
        took = time.monotonic() - moved_at
        print(f"\nslot {slot} moved {source} -> {target}: lock shown on {target} after {took:.2f} s")
        assert removed(st, "lock", LOCK_ID) == [], "the lock never left the screen"
        note = st.get("key", "redis:cluster:{order-7}:note")
        assert isinstance(note, RawKey) and note.node == target and not note.stale
        assert LOCK_KEY not in st.keys_of(source) and LOCK_KEY in st.keys_of(target)
        assert st.counts()["lock"] == 1


async def test_lock_redis_runs_on_the_cluster_and_the_collectors_see_its_lock(
    redis_cluster: tuple[LocalCluster, ClusterInfo],
) -> None:
    _, info = redis_cluster
    await asyncio.to_thread(wait_until, lambda: cluster_ok(info), 30, "cluster_state:ok everywhere")
    state = Path(info.state_dir)
    async with observing(info) as (_, st):
        seen: set[str] = set()

        def ours() -> list[Lock]:
            return [
                lk
                for lk in st.entities("lock")
                if isinstance(lk, Lock) and lk.name.startswith("coordscope:lock:{lock-redis")
            ]

        run = asyncio.create_task(
            asyncio.to_thread(cli_in, state, "run", "lock-redis", "--set", "rounds=4", "--quiet")
        )
        while not run.done():
            seen.update(
                f"{lk.name} {lk.layout} {','.join(lk.nodes)} {lk.fence}" for lk in ours() if lk.holder
            )
            await asyncio.sleep(0.005)
        done = await run
        assert done.returncode == 0, done.stdout + done.stderr
        assert "HELD" in done.stdout
        assert seen, "the collectors saw the run's lock held"
        assert all(" coordscope " in s for s in seen), seen  # recognised as coordscope's layout
        # the lock's keys share one slot (the hash tag), on one primary: one grant each time
        assert all(s.count("cluster-") == 1 for s in seen), seen
        await eventually(lambda: not ours(), 10, "the run's lock gone once it cleaned up")

    compared = cli_in(state, "run", "lock-compare", "--set", "rounds=2", "--set", "redis_waiting=signal")
    assert compared.returncode == 0 and "HELD" in compared.stdout, compared.stdout + compared.stderr
    # ordering: every key of a run carries its hash tag (streams, orders, marks: one slot),
    # so its scripts and its workers' pipelines run on the cluster as on one node
    ordered = cli_in(state, "run", "ordering", "--fault", "crash-before-ack", "--set", "dedup=off", "--quiet")
    assert ordered.returncode == 1 and "applied twice" in ordered.stdout, ordered.stdout + ordered.stderr
    ordered = cli_in(state, "run", "ordering", "--set", "orders=8", "--quiet")
    assert ordered.returncode == 0 and "HELD" in ordered.stdout, ordered.stdout + ordered.stderr
    # session: Spring Session's keys share the run's hash tag; the expiry is watched by polling
    # (a keyspace event comes from whichever primary holds the slot)
    sessions = cli_in(state, "run", "session", "--fault", "kill-instance", "--quiet")
    assert sessions.returncode == 0 and "HELD" in sessions.stdout, sessions.stdout + sessions.stderr
    sessions = cli_in(
        state, "run", "session", "--set", "store=container", "--set", "idle_s=2", "--fault", "expire"
    )
    assert sessions.returncode == 0 and "polling found it gone" in sessions.stdout, (
        sessions.stdout + sessions.stderr
    )
    refused = cli_in(state, "run", "lock-redlock")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "lock-redlock cannot run on a Redis Cluster: RedLock needs independent masters" in refused.stderr
