"""The Redis collector on a keyspace bigger than its budgets, against real servers:
paced scans with progress, keys summarised by prefix, locks among them always listed,
and a subscription that steps aside before the server's buffer for it grows big."""

from __future__ import annotations

import asyncio
import subprocess

from app.cluster import ClusterInfo
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.families.nodes import Node
from collectors.families.prefixes import KeyPrefix
from collectors.limits import Limits
from collectors.state import State
from tests.conftest import observing, redis_client, redis_port, until


async def load(cluster: ClusterInfo, name: str, sets: int, keys: int) -> None:
    """A burst of pipelined SETs (redis-benchmark), far faster than one-by-one writes."""
    port = str(redis_port(cluster, name))
    args = ["-p", port, "-t", "set", "-n", str(sets), "-r", str(keys), "-P", "64", "-c", "2", "-q"]
    done = await asyncio.to_thread(
        subprocess.run, ["redis-benchmark", *args], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def node(st: State, node_id: str) -> Node:
    found = st.node(node_id)
    assert isinstance(found, Node)
    return found


def prefixes(st: State) -> dict[str, KeyPrefix]:
    return {p.prefix: p for p in st.entities("prefix") if isinstance(p, KeyPrefix) and p.node == "redis-1"}


async def test_past_the_budget_keys_are_counted_by_prefix_and_locks_are_still_listed(
    cluster: ClusterInfo,
) -> None:
    r = redis_client(cluster)
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"cache:user:{i}", "v" * 10, ex=3600 if i % 3 else None)
    pipe.hset("stats:daily:1", mapping={"a": 1})
    pipe.set("jobs:nightly:lock", "0123456789abcdef0123456789abcdef", px=60000)
    pipe.execute()
    limits = Limits(raw_keys=50, scan_rate=4000, scan_count=100)
    async with observing(cluster, limits=limits) as bus:
        st = bus.state
        assert node(st, "redis-1").scan.startswith("scanned 3,002 keys")  # synced: the scan ended
        lock = st.get("lock", "redis:jobs:nightly:lock")
        assert isinstance(lock, Lock) and lock.holder
        listed = [k for k in st.entities("key") if isinstance(k, RawKey) and k.node == "redis-1"]
        assert len(listed) == 50
        await until(
            bus,
            lambda s: (p := prefixes(s).get("cache:user:")) is not None and p.as_of_ms > 0,
            "the count to be announced",
        )
        found = prefixes(st)
        user = found["cache:user:"]
        assert user.keys == 3000 and user.as_of_ms > 0
        assert user.ttls == {"none": 1000, "<1h": 2000}  # an hour, less the time since
        assert user.types == {"string": 3000} and user.bytes == 30000 and len(user.examples) == 3
        assert node(st, "redis-1").summarised == 3001 - 50  # every raw key, less those listed
        # changes after the count are counted beside it (keys that are not listed: a listed
        # key's removal would free a place in the list instead)
        shown = {k.key for k in listed}
        r.delete(*[k for k in (f"cache:user:{i}" for i in range(3000)) if k not in shown][:2])
        r.set("cache:user:new", "v")
        await until(
            bus,
            lambda s: (p := prefixes(s).get("cache:user:")) is not None and (p.writes, p.removals) == (1, 2),
            "writes and removals since the count",
        )
        r.set("late:lock", "fedcba9876543210fedcba9876543210", px=60000)  # a lock is never summarised
        await until(bus, lambda s: s.get("lock", "redis:late:lock") is not None, "a new lock")


async def test_a_scan_is_paced_and_shows_its_progress(cluster: ClusterInfo) -> None:
    r = redis_client(cluster)
    r.mset({f"slow:{i}": "x" for i in range(2000)})
    limits = Limits(scan_rate=1000, scan_count=100)
    async with observing(cluster, limits=limits) as bus:
        # synced only after the ~2 s scan; its progress was on the node meanwhile
        collector = next(c for c in bus.source.redis if c.target.id == "redis-1")
        assert collector.scans == 1
        progress = [line.text for line in bus.state.snapshot().log if "initial scan" in line.text]
        took_ms = [int(t.split(" in ")[1].split(" ms")[0]) for t in progress if t.startswith("initial scan")]
        assert took_ms and max(took_ms) >= 1500  # 2,000 keys at 1,000 a second, not one burst


async def test_a_subscriber_falling_behind_steps_aside_and_scans_then_subscribes_again(
    cluster: ClusterInfo,
) -> None:
    limits = Limits(sub_buffer_bytes=256 * 1024, pause_s=2.0, scan_interval_s=0.3)
    async with observing(cluster, limits=limits) as bus:
        collector = next(c for c in bus.source.redis if c.target.id == "redis-3")
        assert collector._subscription is not None
        collector._subscription.pause_reading()  # as if this process were too busy to read
        await load(cluster, "redis-3", sets=300000, keys=1000)
        await until(
            bus,
            lambda s: node(s, "redis-3").feed.startswith("notifications paused"),
            "the feed to say the subscription stepped aside",
            timeout=10,
        )
        assert any("faster than we read them" in line.text for line in bus.state.snapshot().log)
        redis_client(cluster, "redis-3").set("paused:lock", "0" * 32, px=60000)
        await until(bus, lambda s: s.get("lock", "redis:paused:lock") is not None, "a scan to find the lock")
        await until(
            bus,
            lambda s: (
                node(s, "redis-3").feed.startswith("keyspace notifications") and node(s, "redis-3").gaps >= 1
            ),
            "subscribed again, the pause counted as a gap",
            timeout=10,
        )
        redis_client(cluster, "redis-3").delete("paused:lock")
        await until(bus, lambda s: s.get("lock", "redis:paused:lock") is None, "notifications flowing again")


async def test_a_burst_faster_than_the_read_back_is_counted_then_resynced_by_scan(
    cluster: ClusterInfo,
) -> None:
    limits = Limits(dirty_keys=500, scan_rate=50_000)
    async with observing(cluster, limits=limits) as bus:
        collector = next(c for c in bus.source.redis if c.target.id == "redis-2")
        await load(cluster, "redis-2", sets=200000, keys=20000)
        await until(
            bus,
            lambda s: any("faster than we read keys back" in line.text for line in s.snapshot().log),
            "the burst to be noticed",
            timeout=10,
        )
        assert collector.backlog <= 500 + 5000  # bounded (a socket read's worth past the cap)
        redis_client(cluster, "redis-2").set("after:burst:lock", "0" * 32, px=60000)
        await until(
            bus, lambda s: s.get("lock", "redis:after:burst:lock") is not None, "a lock after", timeout=15
        )
        await until(
            bus,
            lambda s: (
                node(s, "redis-2").gaps > 0 and node(s, "redis-2").feed.startswith("keyspace notifications")
            ),
            "the burst over, counted as a gap, notifications back",
            timeout=15,
        )
        assert any("the burst is over" in line.text for line in bus.state.snapshot().log)
        dbsize = redis_client(cluster, "redis-2").dbsize()
        await until(
            bus,
            lambda s: node(s, "redis-2").keys + node(s, "redis-2").summarised == dbsize,
            "every key listed or counted after the resync",
            timeout=20,
        )
