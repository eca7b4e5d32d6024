"""A three-server ZooKeeper ensemble started by `coordscope up --zk-ensemble 3`, watched
through a connect string naming all three: each server's role is shown, and the
leader's death (SIGKILL) leaves no entity lost and none stale."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock as KazooLock

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.families.nodes import Node
from collectors.state import State
from collectors.zk_roles import srvr
from collectors.zookeeper import ZkCollector
from tests.conftest import cluster_up, eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, ClusterInfo]]:
    """`coordscope up --zk-ensemble 3` in a state folder of its own; `down` at the end
    must stop exactly the processes it started."""
    with cluster_up(tmp_path_factory.mktemp("ensemble"), "--zk-ensemble", "3", "--masters", "1") as up:
        yield up


def zk_servers(info: ClusterInfo) -> list[str]:
    return [m.name for m in info.members if m.kind == "zookeeper"]


async def roles(info: ClusterInfo) -> dict[str, str]:
    found = {}
    for m in info.members:
        if m.kind == "zookeeper":
            found[m.name] = (await srvr("127.0.0.1", m.port)).role
    return found


async def test_up_starts_three_servers_that_elect_one_leader(
    ensemble: tuple[LocalCluster, ClusterInfo],
) -> None:
    _, info = ensemble
    assert zk_servers(info) == ["zookeeper-1", "zookeeper-2", "zookeeper-3"]
    (target,) = info.zk_targets()
    assert target.id == "zookeeper" and len(target.servers) == 3
    assert sorted((await roles(info)).values()) == ["follower", "follower", "leader"]
    for m in info.members:
        if m.kind == "zookeeper":
            cfg = (Path(m.dir) / "zoo.cfg").read_text()
            assert (Path(m.dir) / "data" / "myid").read_text().strip() == str(m.myid)
            assert sum(line.startswith("server.") for line in cfg.splitlines()) == 3
            assert "admin.enableServer=false" in cfg and f"clientPort={m.port}" in cfg


async def test_the_leaders_death_is_shown_and_nothing_is_lost_or_stale(
    ensemble: tuple[LocalCluster, ClusterInfo],
) -> None:
    cluster, info = ensemble
    (target,) = info.zk_targets()
    holder = KazooClient(hosts=target.hosts, timeout=15.0)
    holder.start(timeout=15)
    state = State()
    collector = ZkCollector(target, state, lambda: None)
    task = asyncio.create_task(collector.run())
    try:
        lock = KazooLock(holder, "/tests/ensemble/order-1", identifier="worker-A")
        assert lock.acquire(timeout=10)
        holder.create("/tests/ensemble/note", b"before")
        await asyncio.wait_for(collector.synced.wait(), 15)

        def lock_held(st: State) -> bool:
            lk = st.get("lock", "zk:zookeeper:/tests/ensemble/order-1")
            return isinstance(lk, Lock) and lk.holder == "worker-A" and not lk.stale

        def server(st: State, name: str) -> Node | None:
            n = st.node(f"zookeeper/{info.member(name).address}")
            return n if isinstance(n, Node) else None

        def leader(st: State) -> str | None:
            leaders = [
                s
                for s in zk_servers(info)
                if (n := server(st, s)) and n.role == "leader" and n.status == "up"
            ]
            return leaders[0] if len(leaders) == 1 else None

        await eventually(lambda: lock_held(state) and leader(state), 10, "the lock and the leader shown")
        old = leader(state)
        assert old is not None
        followers = [s for s in zk_servers(info) if s != old]
        assert all((n := server(state, s)) and n.role == "follower" for s in followers)
        ensemble_node = state.node("zookeeper")
        assert ensemble_node is not None and old in {
            m.name for m in info.members if m.address in ensemble_node.role
        }
        assert "persistent" in ensemble_node.feed

        await asyncio.to_thread(cluster.kill, old)  # SIGKILL by PID

        def recovered(st: State) -> bool:
            new, dead, whole = leader(st), server(st, old), st.node("zookeeper")
            return (
                new is not None
                and new != old
                and dead is not None
                and dead.status == "down"
                and whole is not None
                and whole.status == "up"
                and collector.persistent
            )

        await eventually(
            lambda: recovered(state), 30, "a new leader shown, the old one down, the collector back"
        )
        new = leader(state)
        down = server(state, old)
        assert down is not None and down.as_of_ms is not None  # shown as of its last good answer
        assert any(f"{info.member(old).address}: leader ->" in line.text for line in state.snapshot().log)
        # nothing lost, nothing stale: the lock, its holder and the note are all still there
        # and the collector follows new writes through the new leader
        holder.set("/tests/ensemble/note", b"after")
        await eventually(
            lambda: (
                lock_held(state)
                and isinstance(k := state.get("key", "zk:zookeeper:/tests/ensemble/note"), RawKey)
                and k.preview == "v1 · after"
                and not k.stale
            ),
            15,
            "the lock held and the note's new version, fresh",
        )
        assert new != old
        lock.release()
        await eventually(
            lambda: state.get("lock", "zk:zookeeper:/tests/ensemble/order-1") is None, 10, "release"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        holder.stop()
        holder.close()
