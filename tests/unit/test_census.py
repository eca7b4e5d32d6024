"""The census of unrecognised keys: prefixes, budgets and what the state lists."""

from __future__ import annotations

from dataclasses import replace

from collectors.census import NO_SEPARATOR, OTHER, NodeCensus, prefix_of, ttl_bucket
from collectors.families.prefixes import KeyPrefix
from collectors.limits import Limits
from collectors.records import KeyRecord
from collectors.state import State


def rec(key: str, *, cause: str = "scan", ttl: int | None = None, value: bytes = b"v") -> KeyRecord:
    return KeyRecord(
        node="r1",
        raw_key=key.encode(),
        type="string",
        ttl_ms=ttl,
        value=value,
        size=len(value),
        read_at_ms=1,
        cause=cause,
    )


def test_a_prefix_is_the_leading_segments_that_name_a_kind_of_thing() -> None:
    assert prefix_of("cache:user:42") == "cache:user:"
    assert prefix_of("cache:user:42:profile") == "cache:user:"
    assert prefix_of("user:42") == "user:"
    assert prefix_of("session:9f86d081884c7d659a2feaa0c55ad015") == "session:"
    assert prefix_of("tenant7:orders:1") == "tenant7:"  # the second segment only when it is a kind
    assert prefix_of("img/2024/a.png") == "img/"
    assert prefix_of("plainkey") == NO_SEPARATOR
    assert ttl_bucket(None) == "none" and ttl_bucket(59_999) == "<1m" and ttl_bucket(90_000_000) == "≥1d"


def test_counts_come_from_the_scan_and_writes_since_are_counted_beside_them() -> None:
    census = NodeCensus("r1", max_prefixes=10, clock=lambda: 1000)
    census.scan_started()
    for i in range(5):
        census.counted(rec(f"cache:user:{i}", ttl=30_000 if i % 2 else None))
    growing, _ = census.take_changes()
    assert [(p.prefix, p.keys, p.as_of_ms) for p in growing] == [("cache:user:", 5, 0)]  # counting
    census.scan_ended()
    (done,), _ = census.take_changes()
    assert done.keys == 5 and done.as_of_ms == 1000
    assert done.ttls == {"none": 3, "<1m": 2} and done.types == {"string": 5} and done.bytes == 5
    assert done.examples == ("cache:user:0", "cache:user:1", "cache:user:2")
    census.seen("cache:user:99", removed=False)
    census.seen("cache:user:0", removed=True)
    (later,), _ = census.take_changes()
    assert (later.keys, later.writes, later.removals) == (5, 1, 1)
    # a second scan counts afresh and silently; its end replaces the count
    census.scan_started()
    census.counted(rec("cache:user:1"))
    assert census.take_changes() == ([], [])
    census.scan_ended()
    (recount,), _ = census.take_changes()
    assert (recount.keys, recount.writes, recount.removals) == (1, 0, 0)
    census.scan_started()
    census.counted(rec("other:1"))
    census.scan_ended()
    ups, gone = census.take_changes()
    assert gone == ["redis:r1:key:cache:user:"] and [p.prefix for p in ups] == ["other:"]


def test_prefixes_past_the_budget_are_counted_as_other() -> None:
    census = NodeCensus("r1", max_prefixes=2, clock=lambda: 1)
    census.scan_started()
    for key in ("a:1", "b:1", "c:1", "d:1", "a:2"):
        census.counted(rec(key))
    census.scan_ended()
    ups, _ = census.take_changes()
    assert {p.prefix: p.keys for p in ups} == {"a:": 2, "b:": 1, OTHER: 2}


def test_the_state_lists_raw_keys_up_to_the_budget_and_summarises_the_rest() -> None:
    state = State(limits=Limits(raw_keys=3))
    state.scan_started("r1")
    for i in range(10):
        state.apply_key(rec(f"cache:item:{i}"))
    state.apply_key(rec("orders:lock", value=b"0" * 32, ttl=30_000))  # a lock is always kept
    state.scan_ended("r1")
    state.refresh_counts()
    assert len(state.entities("key")) == 3
    assert len(state.entities("lock")) == 1
    (prefix,) = state.entities("prefix")
    assert isinstance(prefix, KeyPrefix) and prefix.prefix == "cache:item:" and prefix.keys == 10
    assert any("summarised by prefix" in line.text for line in state.snapshot().log)
    # a listed key that goes frees its place for the next one read
    listed = state.entities("key")[0]
    state.drop_key("r1", listed.key.encode())  # type: ignore[attr-defined]
    state.apply_key(rec("cache:item:77", cause="set"))
    assert len(state.entities("key")) == 3
    # a summarised key's write and removal are counted since the count (the removal under
    # the family whose census counts its prefix)
    state.apply_key(rec("cache:item:78", cause="set"))
    state.drop_key("r1", b"cache:item:5", "expired")
    state.refresh_counts()
    (after,) = state.entities("prefix")
    assert isinstance(after, KeyPrefix) and (after.writes, after.removals) == (1, 1)


def session(key: str, user: str, cause: str = "scan") -> KeyRecord:
    return KeyRecord(
        node="r1",
        raw_key=key.encode(),
        type="string",
        ttl_ms=600_000,
        value=b'{"cookie":{"originalMaxAge":600000},"user":"' + user.encode() + b'"}',
        size=40,
        read_at_ms=1,
        cause=cause,
    )


def test_a_family_past_its_budget_is_summarised_too_and_its_entities_stay_whole() -> None:
    state = State(limits=Limits(family_keys=5))
    state.scan_started("r1")
    for i in range(12):
        state.apply_key(session(f"sess:user{i}", f"u{i}"))
    state.scan_ended("r1")
    state.refresh_counts()
    assert len(state.entities("session")) == 5
    (prefix,) = state.entities("prefix")
    assert isinstance(prefix, KeyPrefix) and (prefix.family, prefix.prefix, prefix.keys) == (
        "session",
        "sess:",
        12,
    )
    assert any("more than 5 session keys" in line.text for line in state.snapshot().log)
    # a listed session's own key is always read back; an unlisted one's change is counted
    state.apply_key(session("sess:user0", "changed", cause="set"))
    listed = {getattr(s, "user", None) for s in state.entities("session")}
    state.apply_key(session("sess:user11", "x", cause="set"))
    state.drop_key("r1", b"sess:user10", "expired")
    state.refresh_counts()
    (after,) = state.entities("prefix")
    assert isinstance(after, KeyPrefix) and (after.writes, after.removals) == (1, 1)
    assert len(state.entities("session")) == 5 and "changed" in listed


def test_a_replica_lists_a_family_key_while_its_master_has_room_and_a_raw_key_beside_it() -> None:
    from dataclasses import replace as with_

    from collectors.families.nodes import Node

    state = State(limits=Limits(raw_keys=2))
    state.set_node(Node(id="r1", store="redis", address="a"))
    state.set_node(Node(id="r1r", store="redis", address="b", master="r1"))
    lock = b"0123456789abcdef0123456789abcdef"
    state.apply_key(with_(rec("a:1:lock", ttl=9000, value=lock), node="r1r"))  # the replica read it first
    state.apply_key(rec("a:1:lock", ttl=9000, value=lock))
    (held,) = state.entities("lock")
    assert [(r.node, r.present) for r in held.grants[0].replicas] == [("r1r", True)]  # type: ignore[attr-defined]
    state.apply_key(with_(rec("a:1"), node="r1r"))  # a raw key: only beside its master's
    assert state.entities("key") == []
    for key in ("a:1", "a:2", "a:3"):
        state.apply_key(rec(key))
    state.apply_key(with_(rec("a:1"), node="r1r"))
    state.apply_key(with_(rec("a:3"), node="r1r"))  # past the master's budget: not listed
    assert sorted(k.id for k in state.entities("key")) == ["redis:r1:a:1", "redis:r1:a:2"]


def test_a_rescan_tells_viewers_nothing_new_and_counts_listed_keys_once() -> None:
    from collectors.events import Upserted
    from collectors.families.nodes import Node

    now = [1_000]
    state = State(limits=Limits(raw_keys=3), clock=lambda: now[0])
    state.set_node(Node(id="r1", store="redis", address="a"))

    def scan(read_at: int) -> None:
        state.scan_started("r1")
        for i in range(10):
            state.apply_key(replace(rec(f"cache:item:{i}", ttl=60_000 - read_at), read_at_ms=read_at))
        state.scan_ended("r1")
        state.refresh_counts()

    scan(1)
    state.drain()
    now[0] = 2_000
    scan(1_000)  # the same keys, their TTL read 999 ms later: the same expiry
    events = state.drain()
    assert not [e for e in events if isinstance(e, Upserted) and e.entity.KIND == "key"]
    node = state.node("r1")
    assert node is not None and (node.keys, node.summarised) == (3, 7)  # 3 listed + 7 counted = 10
    held = state.record("r1", "cache:item:0")  # kept as last read: the scan saw it
    assert held is not None and held.read_at_ms == 1_000
