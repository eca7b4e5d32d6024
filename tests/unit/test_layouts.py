"""Recognisers alone: what each library leaves in the stores, and garbage."""

from __future__ import annotations

import json
import struct

import pytest

from collectors.families import recognise_key
from collectors.layouts import LayoutConfig, javaser, zk_locks
from collectors.layouts.coordscope import lock_value, parse_lock_value
from collectors.layouts.facts import (
    AuxiliaryFact,
    LockFact,
    RunFact,
    SessionFact,
    SessionShadowFact,
    WaitersFact,
    ZkLockFact,
)
from collectors.records import KeyRecord, ZNodeRecord

LONG_HEADER = bytes.fromhex(
    "aced00057372000e6a6176612e6c616e672e4c6f6e673b8be490cc8f23df0200014a000576616c7565787200"
    "106a6176612e6c616e672e4e756d62657286ac951d0b94e08b0200007870"
)
INT_1800 = bytes.fromhex(
    "aced0005737200116a6176612e6c616e672e496e746567657212e2a0a4f781873802000149000576616c7565"
    "787200106a6176612e6c616e672e4e756d62657286ac951d0b94e08b020000787000000708"
)
ALICE = bytes.fromhex("aced0005740005616c696365")


def recognise_zk_lock(
    path: str, children: list[ZNodeRecord], config: LayoutConfig | None = None
) -> ZkLockFact | None:
    return zk_locks.recognise(path, children, (config or LayoutConfig()).compiled_zk_patterns())


def string(key: str, value: bytes | str, ttl: int | None = 30000) -> KeyRecord:
    raw = value.encode() if isinstance(value, str) else value
    return KeyRecord(
        node="redis-1",
        raw_key=key.encode(),
        type="string",
        ttl_ms=ttl,
        read_at_ms=1000,
        value=raw,
        size=len(raw),
    )


def hash_(key: str, fields: dict[bytes, bytes], ttl: int | None = 30000) -> KeyRecord:
    return KeyRecord(
        node="redis-1",
        raw_key=key.encode(),
        type="hash",
        ttl_ms=ttl,
        read_at_ms=1000,
        fields=fields,
        size=len(fields),
    )


def java_long(ms: int) -> bytes:
    return LONG_HEADER + struct.pack(">q", ms)


# ------------------------------------------------------------------ redis locks


def test_redis_py_lock_is_recognised_with_its_token_as_holder() -> None:
    fact = recognise_key(string("acct:42:lock", "93ec698ee95a11f1900002fc00000001"))
    assert isinstance(fact, LockFact)
    assert fact.layout == "redis-py"
    assert fact.holder == fact.token == "93ec698ee95a11f1900002fc00000001"


def test_node_redlock_token_is_told_apart_from_uuid1() -> None:
    fact = recognise_key(string("locks:order:7", "54eb99d4d70deb5cc0a724c8e9a5d55d"))
    assert isinstance(fact, LockFact) and fact.layout == "node-redlock"


def test_pottery_redlock_prefix_and_uuid4() -> None:
    fact = recognise_key(string("redlock:printer", "8799e082-e54e-43d9-99ae-bc6d3554a40f"))
    assert isinstance(fact, LockFact) and fact.layout == "pottery"


def test_python_redis_lock_and_its_signal_list_is_not_a_lock() -> None:
    fact = recognise_key(string("lock:report-job", "2eQy5yl2jFwh09ktzwk2/7uJ"))
    assert isinstance(fact, LockFact) and fact.layout == "python-redis-lock"
    signal = KeyRecord(
        node="redis-1",
        raw_key=b"lock-signal:report-job",
        type="list",
        ttl_ms=1000,
        read_at_ms=1,
        items=(b"1",),
        size=1,
    )
    assert isinstance(recognise_key(signal), AuxiliaryFact)


def test_redisson_hash_holder_is_uuid_thread_with_reentrancy() -> None:
    fact = recognise_key(hash_("orders:lock", {b"ce5fd25b-b1cf-4931-9c7e-8668237b5508:1": b"2"}))
    assert isinstance(fact, LockFact)
    assert fact.layout == "redisson"
    assert fact.holder == "ce5fd25b-b1cf-4931-9c7e-8668237b5508:1"
    assert "2" in fact.detail
    latch = string("redisson_unlock_latch:{orders:lock}:" + "a" * 32, "0", ttl=100)
    assert isinstance(recognise_key(latch), AuxiliaryFact)


def test_token_with_ttl_is_a_lock_even_without_lock_in_its_name() -> None:
    fact = recognise_key(string("payments:mutex", "8799e082-e54e-43d9-99ae-bc6d3554a40f"))
    assert isinstance(fact, LockFact)
    assert recognise_key(string("payments:mutex", "8799e082-e54e-43d9-99ae-bc6d3554a40f", ttl=None)) is None


def test_heuristics_can_be_turned_off_and_patterns_added() -> None:
    config = LayoutConfig(lock_patterns=("mutex:*",), token_heuristics=False)
    assert recognise_key(string("payments:mutex", "8799e082-e54e-43d9-99ae-bc6d3554a40f"), config) is None
    fact = recognise_key(string("mutex:job", "anything at all"), config)
    assert isinstance(fact, LockFact) and fact.layout == "pattern"


def test_plain_strings_are_not_locks() -> None:
    assert recognise_key(string("user:7:name", "alice")) is None
    assert recognise_key(string("counter", "12", ttl=None)) is None


# ------------------------------------------------------------------ our own layout


def test_coordscope_lock_round_trip() -> None:
    value = lock_value("client-2", 34, "ab12")
    assert parse_lock_value(value.encode()) == ("client-2", 34, "ab12")
    fact = recognise_key(string("coordscope:lock:run-1", value))
    assert isinstance(fact, LockFact)
    assert (fact.layout, fact.holder, fact.fence) == ("coordscope", "client-2", 34)


def test_coordscope_lock_with_garbage_value_is_still_a_lock_without_holder() -> None:
    fact = recognise_key(string("coordscope:lock:run-1", b"\xff\xfe not json"))
    assert isinstance(fact, LockFact)
    assert fact.holder is None and fact.detail == "unreadable value"


def test_coordscope_waiters_and_runs() -> None:
    fact = recognise_key(hash_("coordscope:waiters:run-1", {b"client-3": b"1700:12", b"client-1": b"junk"}))
    assert isinstance(fact, WaitersFact)
    assert fact.lock_name == "coordscope:lock:run-1"
    assert fact.waiters == (("client-1", None, None), ("client-3", 1700, 12))
    run = recognise_key(hash_("coordscope:run:lock-redis-1", {b"scenario": b"lock-redis"}, None))
    assert isinstance(run, RunFact) and run.meta["scenario"] == "lock-redis"


# ------------------------------------------------------------------ sessions


def test_spring_session_hash_decodes_java_values() -> None:
    sid = "0b4c9f1e-6d7e-4a7d-9a52-5b1a2b3c4d5e"
    fields = {
        b"creationTime": java_long(1795673000000),
        b"lastAccessedTime": java_long(1795673100000),
        b"maxInactiveInterval": INT_1800,
        b"sessionAttr:user": ALICE,
    }
    fact = recognise_key(hash_(f"spring:session:sessions:{sid}", fields, ttl=2100_000))
    assert isinstance(fact, SessionFact)
    assert fact.layout == "spring-session"
    assert (fact.session_id, fact.user, fact.max_inactive_s) == (sid, "alice", 1800)
    assert fact.created_ms == 1795673000000 and fact.last_access_ms == 1795673100000
    assert fact.attributes == {"user": "alice"}
    shadow = recognise_key(string(f"spring:session:sessions:expires:{sid}", b"", ttl=1800_000))
    assert shadow == SessionShadowFact(session_id=sid, group="spring:session")


def test_spring_auxiliary_sets_are_not_sessions() -> None:
    rec = KeyRecord(
        node="redis-1",
        raw_key=b"spring:session:expirations:1795673100000",
        type="set",
        ttl_ms=None,
        read_at_ms=1,
        items=(b"x",),
        size=1,
    )
    assert isinstance(recognise_key(rec), AuxiliaryFact)


def test_connect_redis_session() -> None:
    body = {
        "cookie": {"originalMaxAge": 1800000, "httpOnly": True, "path": "/"},
        "user": "alice",
        "cart": [1, 2],
    }
    fact = recognise_key(string("sess:bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu", json.dumps(body), ttl=1800_000))
    assert isinstance(fact, SessionFact)
    assert fact.layout == "connect-redis"
    assert fact.session_id == "bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu"
    assert fact.user == "alice"
    assert fact.attributes == {"user": "alice", "cart": "[1, 2]"}


def test_javaser_reads_what_spring_writes_and_describes_the_rest() -> None:
    assert javaser.decode(ALICE) == "alice"
    assert javaser.decode(INT_1800) == 1800
    assert javaser.decode(java_long(42)) == 42
    assert javaser.decode(b"\xac\xed\x00\x05sr\x00\x11java.util.HashMap...") == "<java.util.HashMap>"
    assert javaser.decode(b'"json string"') == "json string"
    assert javaser.decode(b"\xac\xed\x00\x05\x74\xff") == "<java object>"


# ------------------------------------------------------------------ hostile and broken input


@pytest.mark.parametrize(
    "key",
    [
        "acct:<img src=x onerror=alert(1)>:lock",
        "acct:[bold red]markup[/]:lock",
        "acct:\x1b[31mansi\x1b[0m:lock",
    ],
)
def test_hostile_names_travel_verbatim(key: str) -> None:
    fact = recognise_key(string(key, "93ec698ee95a11f1900002fc00000001"))
    assert isinstance(fact, LockFact) and fact.name == key


def test_non_utf8_key_is_shown_with_escapes() -> None:
    rec = KeyRecord(
        node="n",
        raw_key=b"lock:\xff\xfe",
        type="string",
        ttl_ms=5,
        read_at_ms=1,
        value=b"93ec698ee95a11f1900002fc00000001",
        size=32,
    )
    assert rec.key == "lock:\\xff\\xfe"
    assert isinstance(recognise_key(rec), LockFact)


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00" * 10, b"{", b"[1,2", b"\xac\xed\x00\x05", b"\xac\xed\x00\x05sr", "é".encode() * 1000],
)
def test_garbage_never_raises(value: bytes) -> None:
    for key in ("sess:x", "coordscope:lock:x", "lock:x", "spring:session:sessions:x"):
        recognise_key(string(key, value))
        recognise_key(hash_(key, {b"creationTime": value, b"a:1": value}))


# ------------------------------------------------------------------ zookeeper


def znode(path: str, data: bytes = b"", owner: int = 0x1234) -> ZNodeRecord:
    return ZNodeRecord(
        path=path,
        data=data,
        children=(),
        czxid=7,
        mzxid=7,
        version=0,
        ephemeral_owner=owner,
        ctime_ms=1,
        mtime_ms=1,
        num_children=0,
        read_at_ms=1,
    )


def test_kazoo_lock_lowest_sequence_holds() -> None:
    parent = "/locks/order-7"
    kids = [
        znode(f"{parent}/c97b0725257c4397ac0bdf86f27dd015__lock__0000000001", b"kazoo-client-B"),
        znode(f"{parent}/b6c9f1ef1e324c7988e3e3eabbf5ca13__lock__0000000000", b"kazoo-client-A"),
    ]
    fact = recognise_zk_lock(parent, kids)
    assert fact is not None and fact.layout == "kazoo"
    assert [c.ident for c in fact.holders] == ["kazoo-client-A"]
    assert [c.seq for c in fact.contenders] == [0, 1]


def test_kazoo_readers_hold_together_until_a_writer() -> None:
    parent = "/locks/rw"
    kids = [
        znode(f"{parent}/{'a' * 32}__rlock__0000000000", b"r1"),
        znode(f"{parent}/{'b' * 32}__rlock__0000000001", b"r2"),
        znode(f"{parent}/{'c' * 32}__lock__0000000002", b"w"),
        znode(f"{parent}/{'d' * 32}__rlock__0000000003", b"r3"),
    ]
    fact = recognise_zk_lock(parent, kids)
    assert fact is not None
    assert [c.ident for c in fact.holders] == ["r1", "r2"]


def test_curator_mutex_holder_is_the_node_name_not_the_shared_ip() -> None:
    parent = "/locks/curator-order-8"
    a = "_c_a9e32e15-f50e-46e0-8a06-c99ffa2d4735-lock-0000000000"
    b = "_c_aff8376b-c4c3-4e27-8d5a-079f97cf3753-lock-0000000001"
    fact = recognise_zk_lock(
        parent, [znode(f"{parent}/{b}", b"127.0.0.1"), znode(f"{parent}/{a}", b"127.0.0.1")]
    )
    assert fact is not None and fact.layout == "curator"
    assert fact.holders[0].ident == a


def test_znodes_that_are_not_contenders_do_not_make_a_lock() -> None:
    assert recognise_zk_lock("/apps", [znode("/apps/billing", owner=0)]) is None
    # a persistent node named like a lock is not a contender of the generic recipe
    assert recognise_zk_lock("/x", [znode("/x/mylock0000000001", owner=0)]) is None
    assert recognise_zk_lock("/x", [znode("/x/mylock0000000001")]) is not None


def test_user_zk_pattern() -> None:
    config = LayoutConfig(zk_lock_patterns=(r"^worker-(?P<seq>\d{10})$",))
    fact = recognise_zk_lock("/jobs", [znode("/jobs/worker-0000000003", b"w3")], config)
    assert fact is not None and fact.layout == "pattern" and fact.holders[0].ident == "w3"


def test_java_values_are_written_as_object_output_stream_writes_them() -> None:
    """Spring Session's bytes (captured from Java, ../shared/research/layouts.md) and back."""
    assert javaser.encode_string("alice").hex() == "aced0005740005616c696365"
    assert javaser.encode_int(1800).hex().endswith("7870" + "00000708")
    assert javaser.encode_long(1795673100000)[-8:] == (1795673100000).to_bytes(8, "big")
    # modified UTF-8: NUL as C0 80, an astral character as its two surrogates (CESU-8)
    assert javaser.encode_string("a\x00").hex() == "aced00057400036 1c080".replace(" ", "")
    assert javaser.encode_string("😀").hex() == "aced0005740006eda0bdedb880"
    for value in ("alice", "a\x00b", "😀 é ü", "x" * 70_000, "é" * 40_000):
        assert javaser.decode(javaser.encode_string(value)) == value
    assert javaser.encode_string("x" * 70_000)[4] == javaser.TC_LONGSTRING
    assert javaser.decode(javaser.encode_long(-5)) == -5 and javaser.decode(javaser.encode_int(0)) == 0


def test_a_prepared_transaction_and_an_idle_session_are_transactions_of_the_postgres_layout() -> None:
    from collectors.layouts import postgres_xacts
    from collectors.layouts.facts import TransactionFact

    def rec(kind: str, raw: bytes, **fields: str) -> KeyRecord:
        values = {k.encode(): v.encode() for k, v in fields.items()}
        return KeyRecord(node="postgres-1", raw_key=raw, type=kind, ttl_ms=None, read_at_ms=1, fields=values)

    prepared = postgres_xacts.recognise(
        rec(
            postgres_xacts.PREPARED,
            postgres_xacts.prepared_key("t-1"),
            gid="t-1",
            since_ms="1000",
            owner="app",
            database="bank",
            xid="77",
            locks="3",
            relations="accounts,accounts_pkey",
            waiters="4242",
        )
    )
    assert isinstance(prepared, TransactionFact)
    assert (prepared.txn_id, prepared.state, prepared.since_ms, prepared.layout) == (
        "pg:postgres-1:t-1",
        "PREPARED (in doubt)",
        1000,
        "postgres",
    )
    assert prepared.branches == (
        ("bank", "PREPARED", "owner app, xid 77, 3 lock(s) on accounts,accounts_pkey; waiting on it: 4242"),
    )
    idle = postgres_xacts.recognise(
        rec(
            postgres_xacts.IDLE,
            postgres_xacts.idle_key(31),
            pid="31",
            user="bob",
            database="bank",
            since_ms="",
            query="SELECT 1",
        )
    )
    assert isinstance(idle, TransactionFact) and idle.txn_id == "pg:postgres-1:pid 31"
    assert idle.state == "IDLE IN TRANSACTION" and idle.since_ms is None
    assert idle.branches[0][2] == "pid 31, user bob, last: SELECT 1"
    assert postgres_xacts.recognise(rec("hash", b"pg_prepared_xacts/x")) is None  # Redis keys are not these
