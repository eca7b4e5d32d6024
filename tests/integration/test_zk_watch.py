"""Every ZooKeeper change seen: persistent recursive watches against a real ZooKeeper 3.8.

The collector's ``events`` counter counts watch notifications; with one persistent
recursive watch it must count (nearly) every one of 2,000 rapid changes, where one-shot
watches (a bare kazoo DataWatch, measured alongside) see a fraction. Reconnects on the
same session and session expiry must leave the watch armed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.recipe.watchers import DataWatch

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.keys import RawKey
from collectors.families.nodes import Node
from collectors.state import State
from collectors.zookeeper import ONE_SHOT_FEED, PERSISTENT_FEED, ZkCollector
from tests.conftest import eventually, zk_client

CHANGES = 2000


@asynccontextmanager
async def collecting(info: ClusterInfo, **target: Any) -> AsyncIterator[tuple[ZkCollector, State]]:
    """One ZooKeeper collector on the local cluster's server, synced."""
    state = State()
    collector = ZkCollector(replace(info.zk_targets()[0], **target), state, lambda: None)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(collector.synced.wait(), 10)
        yield collector, state
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def burst(calls: list[Callable[[], Any]]) -> None:
    """Send every request at once (kazoo pipelines them), then wait for every answer."""
    for result in [call() for call in calls]:
        result.get(30)


def node(state: State) -> Node:
    n = state.node("zookeeper")
    assert isinstance(n, Node)
    return n


async def count_settles(collector: ZkCollector, since: int, want: int, timeout: float = 15.0) -> int:
    """The collector's events since ``since`` once it reached ``want``, or stopped moving."""
    deadline = time.monotonic() + timeout
    last, still = -1, time.monotonic()
    while collector.events - since < want and time.monotonic() < deadline:
        if collector.events != last:
            last, still = collector.events, time.monotonic()
        elif time.monotonic() - still > 2.0:  # nothing new for 2 s: it will not come
            break
        await asyncio.sleep(0.02)
    return collector.events - since


async def test_every_rapid_set_of_one_znode_is_received(cluster: ClusterInfo, zk_root: str) -> None:
    path = f"{zk_root}/hot"
    writer = zk_client(cluster)
    bare = zk_client(cluster)
    try:
        writer.create(path, b"0", makepath=True)
        async with collecting(cluster) as (collector, state):
            assert collector.persistent and node(state).feed == PERSISTENT_FEED
            fired: list[int] = []
            DataWatch(bare, path, lambda data, stat, event=None: fired.append(stat.version if stat else -1))
            await eventually(lambda: fired, 5, "the bare DataWatch's first call")
            bare_before, since = len(fired), collector.events
            started = time.monotonic()
            await asyncio.to_thread(
                burst, [lambda i=i: writer.set_async(path, str(i).encode()) for i in range(1, CHANGES + 1)]
            )
            ours = await count_settles(collector, since, CHANGES)
            took = time.monotonic() - started
            theirs = len(fired) - bare_before
            print(f"\n{CHANGES} sets in {took:.2f}s: collector {ours}, bare DataWatch {theirs}")
            assert ours >= 0.99 * CHANGES
            assert ours <= CHANGES  # counted once each, not once per kind of watcher
            await eventually(
                lambda: (
                    isinstance(k := state.get("key", f"zk:zookeeper:{path}"), RawKey) and k.version == CHANGES
                ),
                5,
                "the last version on screen",
            )
            raw = state.get("key", f"zk:zookeeper:{path}")
            assert isinstance(raw, RawKey) and raw.preview == f"v{CHANGES} · {CHANGES}"
            await eventually(
                lambda: node(state).events >= collector.events, 5, "the node's counter published"
            )
    finally:
        for c in (writer, bare):
            c.stop()
            c.close()


async def test_every_child_created_and_deleted_is_received(cluster: ClusterInfo, zk_root: str) -> None:
    parent = f"{zk_root}/queue"
    writer = zk_client(cluster)
    try:
        writer.create(parent, b"", makepath=True)
        async with collecting(cluster) as (collector, state):
            since = collector.events
            half = CHANGES // 2
            await asyncio.to_thread(
                burst, [lambda i=i: writer.create_async(f"{parent}/c{i}") for i in range(half)]
            )
            await asyncio.to_thread(
                burst, [lambda i=i: writer.delete_async(f"{parent}/c{i}") for i in range(half)]
            )
            writer.create(f"{parent}/last", b"x")
            ours = await count_settles(collector, since, CHANGES + 1)
            assert ours >= 0.99 * CHANGES

            # no NodeChildrenChanged comes with a recursive watch: the parent was re-read
            def settled() -> bool:
                rec = state.zk_record("zookeeper", parent)
                below = {p for p in state.znode_paths("zookeeper") if p.startswith(parent + "/")}
                return rec is not None and rec.children == ("last",) and below == {f"{parent}/last"}

            await eventually(settled, 10, "the parent and the tree listing only the last child")
    finally:
        writer.stop()
        writer.close()


async def test_forced_one_shot_watches_still_show_the_latest_state(
    cluster: ClusterInfo, zk_root: str
) -> None:
    path = f"{zk_root}/hot"
    writer = zk_client(cluster)
    try:
        writer.create(path, b"0", makepath=True)
        async with collecting(cluster, persistent_watches=False) as (collector, state):
            assert not collector.persistent and node(state).feed == ONE_SHOT_FEED
            since = collector.events
            await asyncio.to_thread(
                burst, [lambda i=i: writer.set_async(path, str(i).encode()) for i in range(1, 201)]
            )
            await eventually(
                lambda: (rec := state.zk_record("zookeeper", path)) is not None and rec.version == 200,
                5,
                "the latest version",
            )
            assert collector.events > since  # one-shot notifications are counted too
            writer.create(f"{path}/child")  # children still followed (NodeChildrenChanged)
            await eventually(
                lambda: state.zk_record("zookeeper", f"{path}/child") is not None, 5, "a new child"
            )
    finally:
        writer.stop()
        writer.close()


async def rapid_sets_counted(collector: ZkCollector, writer: KazooClient, path: str, n: int = 200) -> int:
    since = collector.events
    await asyncio.to_thread(burst, [lambda i=i: writer.set_async(path, str(i).encode()) for i in range(n)])
    return await count_settles(collector, since, n)


async def test_the_watch_survives_a_server_restart_on_the_same_session(
    cluster: ClusterInfo, local_cluster: LocalCluster, zk_root: str
) -> None:
    path = f"{zk_root}/hot"
    setup = zk_client(cluster)
    setup.create(path, b"0", makepath=True)
    setup.stop()
    setup.close()
    # a session that outlives a slow JVM restart on a loaded machine (the test is about the
    # watch on a surviving session; expiry has its own test below)
    async with collecting(cluster, session_timeout_s=40.0) as (collector, state):
        client = collector.client
        assert client is not None
        session = client.client_id[0]
        resyncs = collector.resyncs
        await asyncio.to_thread(local_cluster.kill, "zookeeper")
        await eventually(lambda: node(state).status == "suspended", 15, "SUSPENDED shown")
        await asyncio.to_thread(local_cluster.restart, "zookeeper")  # with its data: sessions too
        await eventually(
            lambda: node(state).status == "up" and collector.persistent and collector.resyncs > resyncs,
            40,  # a JVM that took long to start may still be slow to answer: within the session
            "reconnected, the watch re-added and the tree re-read",
        )
        assert client.client_id[0] == session  # the same session: no LOST
        assert node(state).gaps >= 1
        writer = zk_client(cluster)
        try:
            assert await rapid_sets_counted(collector, writer, path) >= 198
        finally:
            writer.stop()
            writer.close()


async def test_after_session_expiry_the_watch_is_added_again(cluster: ClusterInfo, zk_root: str) -> None:
    path = f"{zk_root}/hot"
    writer = zk_client(cluster)
    try:
        writer.create(path, b"0", makepath=True)
        async with collecting(cluster) as (collector, state):
            client = collector.client
            assert client is not None
            session_id, password = client.client_id
            # expire the collector's session from outside (kazoo's own test trick)
            thief = KazooClient(hosts=cluster.member("zookeeper").address, client_id=(session_id, password))
            thief.start(timeout=10)
            thief.stop()
            thief.close()
            await eventually(
                lambda: client.client_id and client.client_id[0] != session_id, 15, "a new session"
            )
            await eventually(
                lambda: node(state).status == "up" and collector.persistent, 10, "the watch re-added"
            )
            writer.create(f"{path}/after-expiry")
            await eventually(
                lambda: state.zk_record("zookeeper", f"{path}/after-expiry") is not None,
                5,
                "the tree resynced",
            )
            assert await rapid_sets_counted(collector, writer, path) >= 198
            assert any(line.text.startswith("LOST") for line in state.snapshot().log)
    finally:
        writer.stop()
        writer.close()
