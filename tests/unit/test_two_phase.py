"""Two-phase commit, the pure parts: our gids, a coordinator's log entry read from its
znode (garbage too), the transactions panel's join of that entry with the branches a
database holds prepared, and the txn-2pc checker on hand-written histories."""

from __future__ import annotations

import json

import pytest

from collectors.families.transactions import Transaction, Transactions
from collectors.layouts import coordscope, postgres_xacts
from collectors.records import KeyRecord, ZNodeRecord
from collectors.runs import RUNNER, Op
from collectors.state import State
from scenarios.transactions.two_phase_checker import check

RUN = "txn-2pc-101010-abcd"
TXN = coordscope.two_pc_txn_id(RUN, "coord-1", "t3")
PATH = f"{coordscope.two_pc_log(RUN, 'coord-1')}/t3"


def test_gids_name_their_transaction_and_participant() -> None:
    gid = coordscope.branch_gid(TXN, "postgres-2")
    assert gid == f"coordscope:{RUN}:coord-1/t3:postgres-2"
    assert coordscope.parse_branch_gid(gid) == (TXN, "postgres-2")
    assert gid.startswith(coordscope.branch_gid_prefix(RUN, "coord-1"))
    assert gid.startswith(coordscope.branch_gid_prefix(RUN))
    assert not gid.startswith(coordscope.branch_gid_prefix(RUN, "coord-2"))
    for other in ("t-1", "xa:1:2", "coordscope:lock:x", "coordscope:a:b", ""):
        assert coordscope.parse_branch_gid(other) is None
    assert len(gid.encode()) < 200  # PostgreSQL's limit on a gid


def znode(path: str, data: bytes, read_at: int = 5000) -> ZNodeRecord:
    return ZNodeRecord(
        path=path,
        data=data,
        children=(),
        czxid=1,
        mzxid=2,
        version=1,
        ephemeral_owner=0,
        ctime_ms=1,
        mtime_ms=2,
        num_children=0,
        read_at_ms=read_at,
    )


def log_entry(state: str, votes: tuple[str, str] = ("yes", "yes"), since: int = 4000) -> bytes:
    return json.dumps(
        {
            "state": state,
            "since_ms": since,
            "coordinator": "coord-1",
            "transfer": {"from": "postgres-1/acct-1", "to": "postgres-2/acct-2", "amount": 10},
            "branches": [
                {"id": "postgres-1", "vote": votes[0], "state": "PREPARED"},
                {"id": "postgres-2", "vote": votes[1], "state": "PREPARED"},
            ],
        }
    ).encode()


def prepared(node: str, participant: str, since: int, waiters: str = "") -> KeyRecord:
    gid = coordscope.branch_gid(TXN, participant)
    fields = {
        "gid": gid,
        "since_ms": str(since),
        "owner": "coordscope",
        "database": "coordscope",
        "xid": "900",
    }
    fields |= {"locks": "4", "relations": "accounts", "waiters": waiters}
    return KeyRecord(
        node=node,
        raw_key=postgres_xacts.prepared_key(gid),
        type=postgres_xacts.PREPARED,
        ttl_ms=None,
        read_at_ms=6000,
        fields={k.encode(): v.encode() for k, v in fields.items()},
    )


def transactions(state: State) -> dict[str, Transaction]:
    return {t.id: t for t in state.entities("transaction")}  # type: ignore[misc]


def test_a_log_entry_and_its_prepared_branches_are_one_transaction_in_doubt() -> None:
    state = State()
    state.apply_znode("zookeeper", znode(coordscope.two_pc_log(RUN, "coord-1"), b""))
    state.apply_znode("zookeeper", znode(PATH, log_entry("COMMITTING")))
    (t,) = transactions(state).values()
    assert (t.id, t.state, t.since_ms) == (TXN, "COMMITTING", 4000)
    assert t.note == "10 from postgres-1/acct-1 to postgres-2/acct-2"
    assert [(b.id, b.state, b.detail) for b in t.branches] == [
        ("postgres-1", "PREPARED", "voted yes"),
        ("postgres-2", "PREPARED", "voted yes"),
    ]
    # the databases say the branches are prepared: in doubt, aged from the oldest
    state.apply_key(prepared("postgres-1", "postgres-1", 3000, waiters="4242 (coord-2)"))
    state.apply_key(prepared("postgres-2", "postgres-2", 3500))
    (t,) = transactions(state).values()
    assert t.state == "IN DOUBT (COMMITTING)" and t.since_ms == 3000
    state_cell = dict(zip((c.key for c in Transactions.columns), Transactions.row(t), strict=True))["state"]
    assert [p.tone for p in state_cell.pieces] == ["bad"]  # red, as IN DOUBT is
    first = t.branches[0]
    assert first.state == "PREPARED" and "waiting on it: 4242 (coord-2)" in first.detail
    assert "postgres-1/coordscope" in first.detail and first.detail.endswith("log: PREPARED")
    # nothing of it is left over as a raw key or znode (the log's folder is one)
    assert [e.key for e in state.entities("key")] == [coordscope.two_pc_log(RUN, "coord-1")]
    # the log says DONE after the databases were last read: that reading is older, not in doubt
    state.apply_znode("zookeeper", znode(PATH, log_entry("DONE", since=6500)))
    (t,) = transactions(state).values()
    assert t.state == "DONE" and t.since_ms == 6500
    state.apply_znode("zookeeper", znode(PATH, log_entry("DONE", since=5500)))  # read after it: in doubt
    (t,) = transactions(state).values()
    assert t.state == "IN DOUBT (DONE)"
    # recovery commits them: the databases no longer hold them, the log says DONE
    state.drop_key("postgres-1", postgres_xacts.prepared_key(coordscope.branch_gid(TXN, "postgres-1")))
    state.drop_key("postgres-2", postgres_xacts.prepared_key(coordscope.branch_gid(TXN, "postgres-2")))
    state.apply_znode("zookeeper", znode(PATH, log_entry("DONE")))
    (t,) = transactions(state).values()
    assert t.state == "DONE" and [b.state for b in t.branches] == ["PREPARED", "PREPARED"]
    state.drop_znode("zookeeper", PATH)
    assert transactions(state) == {}


def test_a_prepared_branch_whose_log_is_gone_still_shows_under_its_transaction() -> None:
    state = State()
    state.apply_key(prepared("postgres-2", "postgres-2", 3500))
    (t,) = transactions(state).values()
    assert t.id == TXN and t.state == "IN DOUBT" and t.since_ms == 3500
    assert [(b.id, b.state) for b in t.branches] == [("postgres-2", "PREPARED")]
    assert "no coordinator's log" in t.protocol and t.note == "coordinator's log not found"


@pytest.mark.parametrize("data", [b"\xff\x00", b"[1,2]", b'{"branches": "no"}', b"", b'{"since_ms": "x"}'])
def test_garbage_in_a_log_entry_reads_as_unknown_and_never_breaks_the_state(data: bytes) -> None:
    state = State()
    state.apply_znode("zookeeper", znode(PATH, data))
    (t,) = transactions(state).values()
    assert t.id == TXN and t.state == "?" and t.since_ms is None


class H:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: int, actor: str, kind: str, f: str, **kw: object) -> H:
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))  # type: ignore[arg-type]
        return self

    def seeded(self, total: int = 6000) -> H:
        return self.op(0, RUNNER, "ok", "seeded", data={"total": total, "participants": ["pg-1", "pg-2"]})

    def read(self, pg1: dict[str, list[object]], pg2: dict[str, list[object]], totals: tuple[int, int]) -> H:
        for name, applied, total in (("pg-1", pg1, totals[0]), ("pg-2", pg2, totals[1])):
            self.op(
                900,
                RUNNER,
                "ok",
                "balances",
                key=name,
                value=str(total),
                data={"total": total, "applied": applied},
            )
        return self


def test_checker_holds_when_every_transfer_is_on_both_or_neither() -> None:
    h = H().seeded().op(10, "coord-1", "ok", "transfer", key="t1", value="committed")
    h.op(
        12, "coord-1", "fail", "transfer", key="t2", value="aborted", note="pg-2 voted no: insufficient funds"
    )
    h.read({"t1": ["a", -10]}, {"t1": ["b", 10]}, (2990, 3010)).op(901, RUNNER, "ok", "db-read")
    verdict = check(h.ops, {})
    assert verdict.holds, verdict.summary
    assert "1 transfer(s) committed on both" in verdict.summary
    assert any("1 aborted (t2: pg-2 voted no: insufficient funds)" in f for f in verdict.findings)


def test_checker_names_branches_left_in_doubt_with_age_and_locks() -> None:
    h = H().seeded().op(20, "coord-1", "info", "crash-point", key="t3").read({}, {}, (3000, 3000))
    gid = coordscope.branch_gid(TXN, "pg-1")
    h.op(902, RUNNER, "info", "in-doubt", key=gid, data={"participant": "pg-1", "age_ms": 12_300, "locks": 4})
    h.op(903, RUNNER, "ok", "db-read")
    verdict = check(h.ops, {})
    assert not verdict.holds
    assert (
        f"1 branch(es) left in doubt, holding their locks: {gid} (pg-1, 12.3 s old, 4 lock(s))"
        in verdict.summary
    )
    assert verdict.at_ms == 20 and verdict.actors == ("pg-1",) and verdict.keys == (gid,)


def test_checker_finds_a_transfer_applied_on_one_participant_only() -> None:
    h = H().seeded().read({"t1": ["a", -10], "t2": ["a", -10]}, {"t1": ["b", 10]}, (2980, 3010))
    verdict = check(h.op(901, RUNNER, "ok", "db-read").ops, {})
    assert not verdict.holds and verdict.summary == "violated: t2 took effect on pg-1 only"


def test_checker_finds_money_created_or_lost() -> None:
    h = H().seeded().read({"t1": ["a", -10]}, {"t1": ["b", 10]}, (2990, 3020))
    verdict = check(h.op(901, RUNNER, "ok", "db-read").ops, {})
    assert not verdict.holds and "the databases hold 6010, 6000 was put in (+10)" in verdict.summary


def test_checker_refuses_a_history_without_the_final_read() -> None:
    with pytest.raises(ValueError, match="no read of the participants"):
        check(H().seeded().ops, {})
