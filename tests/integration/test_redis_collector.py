"""The Redis collector against real servers: third-party writes, gaps, dead nodes, garbage."""

from __future__ import annotations

import json
import threading

import redis
from redis.lock import Lock as RedisPyLock

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.families.nodes import Node
from collectors.families.sessions import Session
from collectors.state import State
from tests.conftest import observing, redis_client, redis_port, until


def lock_named(st: State, name: str) -> Lock | None:
    lock = st.get("lock", f"redis:{name}")
    return lock if isinstance(lock, Lock) else None


async def test_a_redis_py_lock_appears_with_its_holder_and_goes_when_released(cluster: ClusterInfo) -> None:
    async with observing(cluster) as bus:
        client = redis_client(cluster)
        lock = RedisPyLock(client, "acct:42:lock", timeout=30)
        assert lock.acquire(blocking=False)
        token = lock.local.token.decode()
        await until(
            bus,
            lambda st: (lk := lock_named(st, "acct:42:lock")) is not None and lk.holder == token,
            "the redis-py lock to appear",
        )
        held = lock_named(bus.state, "acct:42:lock")
        assert held is not None and held.layout == "redis-py" and 0 < (held.ttl_ms or 0) <= 30000
        # the replica's copy is replication state of the same lock, never a second holder
        await until(
            bus,
            lambda st: (
                (lk := lock_named(st, "acct:42:lock")) is not None
                and lk.grants[0].replicas
                and lk.grants[0].replicas[0].present
            ),
            "the replica to hold a copy",
        )
        assert len(bus.state.entities("lock")) == 1
        lock.release()
        await until(bus, lambda st: lock_named(st, "acct:42:lock") is None, "the lock to go")
        assert any("acct:42:lock: released" in line.text for line in bus.state.snapshot().log)


async def test_expiry_is_seen_and_narrated(cluster: ClusterInfo) -> None:
    async with observing(cluster) as bus:
        client = redis_client(cluster, "redis-2")
        client.set("job:7:lock", "8799e082-e54e-43d9-99ae-bc6d3554a40f", px=150)
        await until(bus, lambda st: lock_named(st, "job:7:lock") is not None, "the lock")
        await until(bus, lambda st: lock_named(st, "job:7:lock") is None, "the lock to expire")
        assert any("job:7:lock: expired" in line.text for line in bus.state.snapshot().log)


async def test_sessions_in_spring_and_connect_redis_layouts(cluster: ClusterInfo) -> None:
    async with observing(cluster) as bus:
        client = redis_client(cluster)
        client.set(
            "sess:bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu",
            json.dumps({"cookie": {"path": "/"}, "user": "alice"}),
            ex=1800,
        )
        client.hset(
            "spring:session:sessions:6f1c",
            mapping={
                "creationTime": bytes.fromhex(
                    "aced00057372000e6a6176612e6c616e672e4c6f6e673b8be490cc8f"
                    "23df0200014a000576616c7565787200106a6176612e6c616e672e4e"
                    "756d62657286ac951d0b94e08b0200007870"
                )
                + (17).to_bytes(8, "big"),
                "sessionAttr:user": bytes.fromhex("aced0005740003626f62"),
            },
        )
        client.expire("spring:session:sessions:6f1c", 2100)
        client.set("spring:session:sessions:expires:6f1c", "", ex=1800)

        def sessions(st: State) -> dict[str, Session]:
            return {s.session_id: s for s in st.entities("session") if isinstance(s, Session)}

        await until(bus, lambda st: len(sessions(st)) == 2, "both sessions")
        found = sessions(bus.state)
        assert found["bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu"].user == "alice"
        assert found["6f1c"].user == "bob" and found["6f1c"].state == "live"
        client.delete("spring:session:sessions:expires:6f1c")
        await until(bus, lambda st: sessions(st)["6f1c"].state == "expired", "spring expiry")
        client.delete("sess:bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu")
        await until(bus, lambda st: len(sessions(st)) == 1, "connect-redis logout")


async def test_a_killed_pubsub_connection_is_a_gap_that_resyncs(cluster: ClusterInfo) -> None:
    async with observing(cluster) as bus:
        collector = next(c for c in bus.source.redis if c.target.id == "redis-1")
        client = redis_client(cluster)
        client.set("before:lock", "0" * 32, px=60000)
        await until(bus, lambda st: lock_named(st, "before:lock") is not None, "a first lock")
        # Kill our subscriber and change things at once: redis-py re-subscribes by itself,
        # and whatever happened in between arrives as no notification at all.
        stop = threading.Event()

        def churn() -> None:
            admin = redis_client(cluster)
            while not stop.is_set():
                admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                admin.set("during:lock", "1" * 32, px=60000)
                admin.delete("before:lock")

        worker = threading.Thread(target=churn)
        worker.start()
        try:
            await until(
                bus, lambda st: (n := st.node("redis-1")) is not None and n.gaps >= 1, "the gap to be noticed"
            )
        finally:
            stop.set()
            worker.join()
        await until(
            bus,
            lambda st: lock_named(st, "during:lock") is not None and lock_named(st, "before:lock") is None,
            "the resync to settle",
        )
        assert collector.subscribe_confirmations >= 1
        assert any("gap:" in line.text for line in bus.state.snapshot().log)


async def test_a_dead_node_is_shown_down_as_of_its_last_data_and_resyncs_on_restart(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        r2 = redis_client(cluster, "redis-2")
        r2.set("orders:lock", "0" * 32, px=60000)
        await until(bus, lambda st: lock_named(st, "orders:lock") is not None, "the lock")
        local_cluster.kill("redis-2")

        def down(st: State) -> bool:
            node = st.node("redis-2")
            return isinstance(node, Node) and node.status == "down"

        await until(bus, down, "redis-2 to be shown down")
        node = bus.state.node("redis-2")
        assert node is not None and node.as_of_ms
        stale = lock_named(bus.state, "orders:lock")
        assert stale is not None and stale.stale  # still listed, marked as old data
        local_cluster.restart("redis-2")  # empty: no persistence
        await until(
            bus,
            lambda st: (n := st.node("redis-2")) is not None and n.status == "up",
            "redis-2 to come back",
            timeout=10,
        )
        await until(
            bus,
            lambda st: lock_named(st, "orders:lock") is None,
            "the lock lost with the restart to disappear",
            timeout=10,
        )


async def test_notifications_off_falls_back_to_scanning_and_says_so(cluster: ClusterInfo) -> None:
    r3 = redis_client(cluster, "redis-3")
    async with observing(cluster, scan_interval_s=0.3) as bus:
        r3.config_set("notify-keyspace-events", "")
        await until(
            bus,
            lambda st: (n := st.node("redis-3")) is not None and n.feed.startswith("scanning"),
            "the feed to say scanning",
            timeout=6,
        )
        r3.set("quiet:lock", "0" * 32, px=60000)
        await until(
            bus,
            lambda st: lock_named(st, "quiet:lock") is not None,
            "a scan to find the lock written without notifications",
            timeout=5,
        )
        r3.config_set("notify-keyspace-events", "KEA")
        await until(
            bus,
            lambda st: (n := st.node("redis-3")) is not None and n.feed.startswith("keyspace notifications"),
            "notifications back",
            timeout=6,
        )


async def test_garbage_and_hostile_names_never_break_the_collector(cluster: ClusterInfo) -> None:
    hostile = [
        "acct:<img src=x onerror=alert(1)>:lock",
        "acct:[bold red]markup[/]:lock",
        "acct:\x1b[31mansi\x1b[0m:lock",
    ]
    async with observing(cluster) as bus:
        client = redis_client(cluster)
        client.set("coordscope:lock:broken", b"\xff\x00{not json")
        client.set(b"bin:\xff\xfe:lock", "0" * 32, px=60000)
        client.set("big:value", "x" * 200_000)
        client.hset("coordscope:run:broken", mapping={"verdict": "{", "params": "[]"})
        client.xadd("coordscope:history:broken", {"op": "not json"})
        client.rpush("jobs:queue", "a", "b")
        for name in hostile:
            client.set(name, "0" * 32, px=60000)
        await until(bus, lambda st: all(lock_named(st, n) is not None for n in hostile), "the hostile locks")
        await until(bus, lambda st: lock_named(st, "bin:\\xff\\xfe:lock") is not None, "the non-UTF-8 lock")
        await until(bus, lambda st: st.get("key", "redis:redis-1:big:value") is not None, "the big value")
        big = bus.state.get("key", "redis:redis-1:big:value")
        assert isinstance(big, RawKey) and big.size == 200_000 and len(big.preview) <= 120
        broken = lock_named(bus.state, "coordscope:lock:broken")
        assert broken is not None and broken.holder is None
        # the collector is still alive and keeps following changes
        client.set("after:lock", "0" * 32, px=60000)
        await until(bus, lambda st: lock_named(st, "after:lock") is not None, "a later lock")
        redis.Redis(port=cluster.member("redis-1").port).delete(*hostile)
        await until(
            bus, lambda st: all(lock_named(st, n) is None for n in hostile), "the hostile locks to go"
        )


async def test_a_set_with_a_ttl_is_one_change_for_viewers(cluster: ClusterInfo) -> None:
    """`SET k v PX ms` sends two notifications (set, expire): one read, one upsert."""
    import asyncio

    from collectors.events import Upserted

    async with observing(cluster) as bus:
        viewer = bus.subscribe()
        await viewer.get()  # the snapshot
        from redis.asyncio import Redis as AsyncRedis

        client = AsyncRedis(port=redis_port(cluster, "redis-2"))  # no replica: its copy is a change too
        for i in range(20):  # one at a time, each its own flush: a second read would show
            await client.set(f"once:{i}:lock", f"{i:032x}", px=60000)
            await asyncio.sleep(0.03)
        await client.aclose()
        upserts: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + 2
        while asyncio.get_running_loop().time() < deadline:
            try:
                delivery = await asyncio.wait_for(viewer.get(), 0.3)
            except TimeoutError:
                if len(upserts) == 20:
                    break
                continue
            for event in delivery:
                if isinstance(event, Upserted) and isinstance(event.entity, Lock):
                    upserts[event.entity.name] = upserts.get(event.entity.name, 0) + 1
        viewer.close()
        assert upserts == {f"once:{i}:lock": 1 for i in range(20)}
