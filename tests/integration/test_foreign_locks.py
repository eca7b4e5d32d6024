"""Locks that coordscope did not take: real pottery and python-redis-lock clients, and
Redisson's and node-redlock's layouts replayed command by command (as they write them)."""

from __future__ import annotations

import redis
import redis_lock
from pottery import Redlock

from app.cluster import ClusterInfo
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.state import State
from tests.conftest import observing, redis_client, until


def lock(st: State, name: str) -> Lock | None:
    found = st.get("lock", f"redis:{name}")
    return found if isinstance(found, Lock) else None


async def test_pottery_redlock_is_one_lock_with_a_grant_per_master(cluster: ClusterInfo) -> None:
    masters = [redis_client(cluster, m.name) for m in cluster.masters]
    async with observing(cluster) as bus:
        printer = Redlock(key="printer", masters=set(masters), auto_release_time=30)
        assert printer.acquire(blocking=False)
        await until(
            bus,
            lambda st: (lk := lock(st, "redlock:printer")) is not None and len(lk.grants) == 3,
            "three grants",
        )
        found = lock(bus.state, "redlock:printer")
        assert found is not None and found.layout == "pottery"
        assert len({g.holder for g in found.grants}) == 1 and found.holder == found.grants[0].holder
        printer.release()
        await until(bus, lambda st: lock(st, "redlock:printer") is None, "the release")


async def test_python_redis_lock_and_its_signal(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus:
        job = redis_lock.Lock(client, "report-job", expire=30)
        assert job.acquire(blocking=False)
        await until(
            bus,
            lambda st: (lk := lock(st, "lock:report-job")) is not None and lk.holder == job.id,
            "the lock with its id as holder",
        )
        found = lock(bus.state, "lock:report-job")
        assert found is not None and found.layout == "python-redis-lock"
        job.release()  # pushes lock-signal:report-job, which is not a lock
        await until(bus, lambda st: lock(st, "lock:report-job") is None, "the release")
        assert lock(bus.state, "lock-signal:report-job") is None


async def test_redisson_hash_layout(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    owner = "ce5fd25b-b1cf-4931-9c7e-8668237b5508:1"
    async with observing(cluster) as bus:
        client.hincrby("orders:lock", owner, 1)  # what RedissonLock's script does
        client.pexpire("orders:lock", 30000)
        client.hincrby("orders:lock", owner, 1)  # reentered
        latch = "redisson_unlock_latch:{orders:lock}:" + "a" * 32
        client.set(latch, "0", px=10_000)  # Redisson's lives for the retry budget, then goes
        await until(
            bus,
            lambda st: (lk := lock(st, "orders:lock")) is not None and "2" in lk.detail,
            "the Redisson lock, held twice",
        )
        found = lock(bus.state, "orders:lock")
        assert found is not None and found.layout == "redisson" and found.holder == owner
        await until(bus, lambda st: st.get("key", f"redis:redis-1:{latch}") is not None, "the latch listed")
        assert lock(bus.state, latch) is None  # a helper key of Redisson's, never a lock
        raw = bus.state.get("key", f"redis:redis-1:{latch}")
        assert isinstance(raw, RawKey) and "(redisson unlock latch)" in raw.preview
        client.delete(latch)
        client.delete("orders:lock")
        await until(bus, lambda st: lock(st, "orders:lock") is None, "the unlock")


async def test_node_redlock_layout_on_three_masters(cluster: ClusterInfo) -> None:
    token = "54eb99d4d70deb5cc0a724c8e9a5d55d"
    async with observing(cluster) as bus:
        for m in cluster.masters:
            redis.Redis(port=m.port).set("locks:order:7", token, px=30000)
        await until(
            bus,
            lambda st: (lk := lock(st, "locks:order:7")) is not None and len(lk.grants) == 3,
            "three grants",
        )
        found = lock(bus.state, "locks:order:7")
        assert found is not None and found.layout == "node-redlock" and found.holder == token
