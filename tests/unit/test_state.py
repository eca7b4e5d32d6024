"""The state alone: observations in, entities and events out."""

from __future__ import annotations

import json
from collections.abc import Callable

from collectors.events import Logged, Removed, Upserted
from collectors.families.locks import Lock
from collectors.families.nodes import Node
from collectors.families.runs import REDRAW_MS, Run
from collectors.families.sessions import Session
from collectors.layouts.coordscope import history_key, lock_value, run_key
from collectors.records import KeyRecord, ZNodeRecord
from collectors.runs import Op
from collectors.state import State

TOKEN = "93ec698ee95a11f1900002fc00000001"


def node(node_id: str, master: str | None = None, status: str = "up") -> Node:
    return Node(
        id=node_id,
        store="redis",
        address=f"{node_id}:1",
        role="replica" if master else "master",
        status=status,
        master=master,
    )


def rec(node_id: str, key: str, value: str, ttl: int | None = 30000, read_at: int = 1000) -> KeyRecord:
    return KeyRecord(
        node=node_id,
        raw_key=key.encode(),
        type="string",
        ttl_ms=ttl,
        read_at_ms=read_at,
        value=value.encode(),
        size=len(value),
    )


def cluster_state(clock: Callable[[], int] = lambda: 5000) -> State:
    state = State(clock=clock)
    for n in (node("redis-1"), node("redis-2"), node("redis-3"), node("replica-1", "redis-1")):
        state.set_node(n)
    state.drain()
    return state


def locks(state: State) -> dict[str, Lock]:
    return {e.id: e for e in state.entities("lock") if isinstance(e, Lock)}


def test_replica_copy_is_replication_state_not_a_second_holder() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "acct:42:lock", TOKEN))
    (lock,) = locks(state).values()
    assert lock.holder == TOKEN and lock.nodes == ("redis-1",)
    assert lock.grants[0].replicas[0].present is False  # not yet on the replica
    state.apply_key(rec("replica-1", "acct:42:lock", TOKEN))
    (lock,) = locks(state).values()
    assert len(lock.grants) == 1
    assert lock.grants[0].replicas[0].present and lock.grants[0].replicas[0].same_value


def test_same_lock_on_several_masters_is_one_lock_with_a_grant_each() -> None:
    state = cluster_state()
    redlock = "54eb99d4d70deb5cc0a724c8e9a5d55d"
    for n in ("redis-1", "redis-2", "redis-3"):
        state.apply_key(rec(n, "locks:order:7", redlock))
    (lock,) = locks(state).values()
    assert [g.node for g in lock.grants] == ["redis-1", "redis-2", "redis-3"]
    assert lock.holder == redlock and lock.layout == "node-redlock"


def test_two_different_holders_across_masters_are_both_shown() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "coordscope:lock:x", lock_value("client-1", 1, "a")))
    state.apply_key(rec("redis-2", "coordscope:lock:x", lock_value("client-2", 1, "b")))
    state.apply_key(rec("redis-3", "coordscope:lock:x", lock_value("client-2", 2, "b")))
    (lock,) = locks(state).values()
    assert {g.holder for g in lock.grants} == {"client-1", "client-2"}
    assert lock.holder == "client-2" and lock.holders == ("client-2", "client-1")  # most granted first
    assert not lock.split  # client-2 has a majority: client-1's grant is a minority


def test_grants_with_no_majority_holder_are_a_split_lock_and_say_so() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "coordscope:lock:x", lock_value("client-a", 1, "a")))
    state.drain()
    state.apply_key(rec("redis-2", "coordscope:lock:x", lock_value("client-b", 1, "b")))
    (lock,) = locks(state).values()
    assert lock.split and set(lock.holders) == {"client-a", "client-b"}
    said = [e.text for e in state.drain() if isinstance(e, Logged)]
    assert any("split" in t and "client-a on redis-1" in t and "client-b on redis-2" in t for t in said), said
    assert "2 different holders" in lock.detail


def test_acquire_release_and_expiry_are_narrated() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "acct:42:lock", TOKEN))
    state.drop_key("redis-1", b"acct:42:lock", "del")
    state.apply_key(rec("redis-1", "acct:43:lock", TOKEN))
    state.drop_key("redis-1", b"acct:43:lock", "expired")
    events = state.drain()
    texts = [e.text for e in events if isinstance(e, Logged)]
    assert any("acct:42:lock: acquired by" in t for t in texts)
    assert any("acct:42:lock: released by" in t for t in texts)
    assert any("acct:43:lock: expired by" in t for t in texts)
    assert [e.id for e in events if isinstance(e, Removed)] == ["redis:acct:42:lock", "redis:acct:43:lock"]


def test_unchanged_reread_emits_nothing() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "acct:42:lock", TOKEN))
    state.drain()
    state.apply_key(rec("redis-1", "acct:42:lock", TOKEN))
    assert state.drain() == []


def test_node_down_marks_its_entities_stale_and_up_clears_it() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "acct:42:lock", TOKEN))
    state.set_node(node("redis-1", status="down"))
    (lock,) = locks(state).values()
    assert lock.stale
    state.set_node(node("redis-1"))
    (lock,) = locks(state).values()
    assert not lock.stale


def test_promoted_replica_becomes_its_own_grant() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "coordscope:lock:f", lock_value("client-a", 1, "a")))
    state.set_node(node("redis-1", status="down"))
    state.set_node(node("replica-1"))  # promoted: no master any more
    state.apply_key(rec("replica-1", "coordscope:lock:f", lock_value("client-b", 1, "b")))
    (lock,) = locks(state).values()
    assert {(g.node, g.holder) for g in lock.grants} == {("redis-1", "client-a"), ("replica-1", "client-b")}


def test_spring_session_live_then_expired_without_its_shadow() -> None:
    state = cluster_state()
    sid = "0b4c9f1e"
    fields = {b"creationTime": b"1", b"maxInactiveInterval": b"1800", b"sessionAttr:user": b"bob"}
    state.apply_key(
        KeyRecord(
            node="redis-1",
            raw_key=f"spring:session:sessions:{sid}".encode(),
            type="hash",
            ttl_ms=2_100_000,
            read_at_ms=1,
            fields=fields,
            size=3,
        )
    )
    state.apply_key(rec("redis-1", f"spring:session:sessions:expires:{sid}", "", ttl=1_800_000))
    (session,) = state.entities("session")
    assert isinstance(session, Session)
    assert (session.state, session.user, session.ttl_ms) == ("live", "bob", 1_800_000)
    state.drop_key("redis-1", f"spring:session:sessions:expires:{sid}".encode(), "expired")
    (session,) = state.entities("session")
    assert isinstance(session, Session) and session.state == "expired"
    texts = [e.text for e in state.drain() if isinstance(e, Logged)]
    assert any("is now expired" in t for t in texts)


def test_raw_keys_are_listed_once_per_master_group() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "user:7", "alice", ttl=None))
    state.apply_key(rec("replica-1", "user:7", "alice", ttl=None))
    (raw,) = state.entities("key")
    assert raw.id == "redis:redis-1:user:7"


def test_zk_contenders_form_one_lock_with_waiters_watching_predecessors() -> None:
    state = State()
    parent = "/locks/order-7"
    a = "b6c9f1ef1e324c7988e3e3eabbf5ca13__lock__0000000000"
    b = "c97b0725257c4397ac0bdf86f27dd015__lock__0000000001"

    def z(path: str, children: tuple[str, ...] = (), data: bytes = b"", owner: int = 0) -> ZNodeRecord:
        return ZNodeRecord(
            path=path,
            data=data,
            children=children,
            czxid=len(path),
            mzxid=1,
            version=0,
            ephemeral_owner=owner,
            ctime_ms=1,
            mtime_ms=1,
            num_children=len(children),
            read_at_ms=1,
        )

    state.apply_znode("zk", z(parent, (a, b)))
    state.apply_znode("zk", z(f"{parent}/{a}", data=b"worker-A", owner=0xA))
    state.apply_znode("zk", z(f"{parent}/{b}", data=b"worker-B", owner=0xB))
    (lock,) = locks(state).values()
    assert lock.store == "zookeeper" and lock.name == parent
    assert lock.holder == "worker-A" and lock.layout == "kazoo"
    assert [(w.id, w.watches, w.session) for w in lock.waiters] == [("worker-B", a, "0xb")]
    assert state.entities("key") == []  # the contenders are the lock, not raw znodes
    state.apply_znode("zk", z(parent, (b,)))
    state.drop_znode("zk", f"{parent}/{a}")
    (lock,) = locks(state).values()
    assert lock.holder == "worker-B" and lock.waiters == ()
    state.apply_znode("zk", z(parent, ()))
    state.drop_znode("zk", f"{parent}/{b}")
    assert locks(state) == {}
    assert [e.key for e in state.entities("key")] == [parent]


def test_run_hash_and_history_make_a_run_with_lanes() -> None:
    clock = [1000]  # the run started at 100: alive
    state = cluster_state(lambda: clock[0])
    meta = {
        b"scenario": b"lock-redis",
        b"status": b"running",
        b"params": b'{"fencing": "off"}',
        b"faults": b'["pause-holder"]',
        b"started_ms": b"100",
        b"actors": b'["client-1"]',
    }
    state.apply_key(
        KeyRecord(
            node="redis-3",
            raw_key=run_key("r1").encode(),
            type="hash",
            ttl_ms=None,
            read_at_ms=1,
            fields=meta,
            size=len(meta),
        )
    )
    ops = [
        Op(0, 5, "client-1", "invoke", "acquire", n=0),
        Op(1, 9, "client-1", "ok", "acquire", fence=1, ttl_ms=100, n=1),
        Op(2, 9, "client-1", "ok", "read", value="0", n=2),
    ]
    entries = tuple((f"{i}-0".encode(), {b"op": op.to_json().encode()}) for i, op in enumerate(ops))
    # a writer that retried a write whose reply it lost appended op 1 twice: read once
    entries = (*entries[:2], entries[1], entries[2])
    state.apply_key(history_record("r1", (*entries, (b"9-0", {b"op": b"junk"}))))
    # a running run is drawn again at most every REDRAW_MS: its history keeps growing
    run = state.get("run", "r1")
    assert isinstance(run, Run) and run.ops == 0
    clock[0] += REDRAW_MS
    state.refresh_counts()  # the flusher's call: what is due is rebuilt
    run = state.get("run", "r1")
    assert isinstance(run, Run)
    assert (run.scenario, run.status, run.faults, run.ops) == ("lock-redis", "running", ("pause-holder",), 3)
    assert run.params == {"fencing": "off"}
    assert [s.kind for s in run.lanes[0].spans] == ["wait", "hold", "lease"]
    assert state.bad_data == 1
    verdict = {
        "holds": False,
        "invariant": "mutual exclusion",
        "summary": "violated: x",
        "actors": ["client-1", "client-2"],
        "at_ms": 9,
    }
    meta2 = {**meta, b"status": b"violated", b"verdict": json.dumps(verdict).encode()}
    state.apply_key(
        KeyRecord(
            node="redis-3",
            raw_key=run_key("r1").encode(),
            type="hash",
            ttl_ms=None,
            read_at_ms=2,
            fields=meta2,
            size=len(meta2),
        )
    )
    run = state.get("run", "r1")
    assert isinstance(run, Run) and run.verdict is not None
    assert run.verdict.actors == ("client-1", "client-2") and not run.verdict.holds
    events = state.drain()
    assert any(isinstance(e, Logged) and "violated: x" in e.text for e in events)
    assert any(isinstance(e, Upserted) and isinstance(e.entity, Run) for e in events)


def test_events_carry_increasing_sequence_numbers() -> None:
    state = cluster_state()
    state.apply_key(rec("redis-1", "acct:1:lock", TOKEN))
    state.apply_key(rec("redis-1", "acct:2:lock", TOKEN))
    seqs = [e.seq for e in state.drain()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def history_record(run_id: str, entries: tuple[tuple[bytes, dict[bytes, bytes]], ...]) -> KeyRecord:
    """A run's history stream as the collector reads it."""
    return KeyRecord(
        node="redis-3",
        raw_key=history_key(run_id).encode(),
        type="stream",
        ttl_ms=None,
        read_at_ms=1,
        entries=entries,
        size=len(entries),
    )


def run_meta(**fields: str) -> KeyRecord:
    meta = {
        b"scenario": b"lock-redis",
        b"status": b"running",
        **{k.encode(): v.encode() for k, v in fields.items()},
    }
    return KeyRecord(
        node="redis-3",
        raw_key=run_key("r2").encode(),
        type="hash",
        ttl_ms=None,
        read_at_ms=1,
        fields=meta,
        size=len(meta),
    )


def test_a_run_whose_process_went_quiet_is_shown_abandoned() -> None:
    now = [10_000]
    state = State(clock=lambda: now[0])
    state.apply_key(run_meta(started_ms="9000", alive_ms="9500"))
    assert (run := state.get("run", "r2")) is not None and isinstance(run, Run) and run.status == "running"
    now[0] = 9500 + 5000  # not quiet for long enough yet
    state.refresh_counts()
    assert (run := state.get("run", "r2")) is not None and isinstance(run, Run) and run.status == "running"
    now[0] = 9500 + 5001  # the heartbeat stopped: the flusher's periodic pass notices
    state.refresh_counts()
    run = state.get("run", "r2")
    assert isinstance(run, Run) and run.status == "abandoned" and "no sign of life" in run.error
    # a run written before heartbeats existed is judged by when it started
    state.apply_key(run_meta(started_ms="1000"))
    run = state.get("run", "r2")
    assert isinstance(run, Run) and run.status == "abandoned"


def test_a_run_table_from_the_store_is_made_as_wide_as_its_header() -> None:
    state = State(clock=lambda: 10_000)
    state.apply_key(
        run_meta(started_ms="9000", alive_ms="9500", table='[["a", "b"], ["1"], ["1", "2", "3"], 7]')
    )
    run = state.get("run", "r2")
    assert isinstance(run, Run) and run.table == (("a", "b"), ("1", ""), ("1", "2"))


def test_keys_deleted_on_a_master_and_its_replica_leave_nothing_behind() -> None:
    state = cluster_state()
    for i in range(50):
        state.apply_key(rec("redis-1", f"acct:{i}:lock", TOKEN))
        state.apply_key(rec("replica-1", f"acct:{i}:lock", TOKEN))
    for i in range(50):
        state.drop_key("redis-1", f"acct:{i}:lock".encode(), "expired")
        state.drop_key("replica-1", f"acct:{i}:lock".encode(), "expired")
    assert locks(state) == {}
    assert not state._causes and not state._members and not state._rechecks  # a long watch stays small


def test_rechecks_come_due_in_order_and_a_moved_one_only_at_its_new_moment() -> None:
    from collectors.state import State

    now = [0]
    state = State(clock=lambda: now[0])
    rebuilt: list[tuple[str, str]] = []
    state._recompute = lambda ref: (rebuilt.append(ref), state._rechecks.pop(ref, None))  # type: ignore[method-assign]
    state.recheck(("lock", "a"), 100)
    state.recheck(("lock", "b"), 50)
    state.recheck(("lock", "a"), 300)  # moved later: not due at 100
    for _ in range(3000):  # many moves of one moment: the heap stays bounded
        state.recheck(("lock", "c"), 1000 + _)
    now[0] = 200
    state.refresh_counts()
    assert rebuilt == [("lock", "b")]
    now[0] = 5000
    state.refresh_counts()
    assert rebuilt == [("lock", "b"), ("lock", "a"), ("lock", "c")]
    assert len(state._due) < 1100


def test_a_message_the_verdict_names_is_shown_gone_wrong() -> None:
    """Its own steps may look fine (discarded after its checks, then committed by A): the
    checker judged the stores, and the run's list marks the message it names."""
    state = State(clock=lambda: 10_000)
    ops = [Op(0, 5, "A", "info", "order", data={"msg": "o3", "tick": "committed"}, n=0),
           Op(1, 6, "A", "info", "order", data={"msg": "o4", "tick": "committed"}, n=1)]  # fmt: skip
    state.apply_key(
        history_record(
            "r2", tuple((f"{i}-0".encode(), {b"op": op.to_json().encode()}) for i, op in enumerate(ops))
        )
    )
    verdict = {"holds": False, "invariant": "iff", "summary": "violated: o3", "keys": ["o3"]}
    state.apply_key(run_meta(status="violated", verdict=json.dumps(verdict)))
    run = state.get("run", "r2")
    assert isinstance(run, Run)
    assert [(j.msg, j.bad) for j in run.journeys] == [("o3", True), ("o4", False)]
