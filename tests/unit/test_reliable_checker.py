"""The txn-reliable-message verdict, from hand-written histories: what A's database, the
broker's hashes and B's database hold at the end, read into the history, and the actors'
own narration for the moment. Held both ways (committed and applied, rolled back and not);
lost by a discard; applied twice; applied for an order never committed; left HALF."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.runs import RUNNER, Op
from scenarios.messaging.reliable_checker import BROKER, CONSUMER, PRODUCER, check


class H:
    """A history: narration first, then the stores as the run reads them at the end."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: int, actor: str, kind: str, f: str, msg: str = "", note: str = "", **data: Any) -> H:
        detail = {"msg": msg, **data} if msg else data
        self.ops.append(
            Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, key=msg, note=note, data=detail)
        )
        return self

    def checks(self, t: int, msg: str, *answers: str) -> H:
        for i, answer in enumerate(answers):
            self.op(t + i * 1000, BROKER, "ok", "check", msg, tick="check", answer=answer, checks=i + 1)
        return self

    def stores(
        self,
        orders: dict[str, int],
        records: dict[str, str],
        messages: dict[str, dict[str, str]],
        effects: dict[str, int],
        marks: list[str] | None = None,
    ) -> list[Op]:
        self.op(9000, RUNNER, "ok", "producer-db", orders=orders, records=records)
        self.op(9001, RUNNER, "ok", "broker-read", messages=messages)
        self.op(
            9002,
            RUNNER,
            "ok",
            "consumer-db",
            effects=effects,
            marks=list(effects) if marks is None else marks,
        )
        return self.op(9003, RUNNER, "ok", "stores-read").ops


def msg(state: str, checks: int = 0, last: str = "") -> dict[str, str]:
    return {"state": state, "checks": str(checks), "max_checks": "5", "last_answer": last}


def test_committed_and_applied_once_rolled_back_and_never_applied_hold() -> None:
    h = H().op(10, PRODUCER, "ok", "local-txn", "o1", tick="committed")
    h.op(20, PRODUCER, "fail", "local-txn", "o2", tick="rolled-back")
    h.checks(1500, "o3", "UNKNOWN", "UNKNOWN", "COMMIT")
    h.op(3500, BROKER, "ok", "deliver", "o3", tick="published", checks=3, answer="COMMIT")
    ops = h.stores(
        orders={"o1": 10, "o3": 30},
        records={"o1": "COMMITTED", "o2": "ROLLED_BACK", "o3": "COMMITTED"},
        messages={"o1": msg("COMMITTED"), "o2": msg("ROLLED_BACK"), "o3": msg("COMMITTED", 3, "COMMIT")},
        effects={"o1": 1, "o3": 1},
    )
    v = check(ops, {})
    assert v.holds, v
    assert v.summary == (
        "held: 2 order(s) committed by A, each applied once by B; 1 not committed, none applied; "
        "1 delivered only by a check-back (o3)"
    )
    assert "o3: 3 check-back(s): UNKNOWN, UNKNOWN, COMMIT → COMMITTED" in v.findings
    assert "broker: 2 COMMITTED, 1 ROLLED_BACK" in v.findings


def test_a_producer_that_died_after_its_half_is_rolled_back_by_the_check_back() -> None:
    h = H().op(900, PRODUCER, "info", "crash", "", note="killed by signal 9")
    h.checks(2400, "o3", "no answer (refused)", "ROLLBACK")
    ops = h.stores(
        orders={},
        records={"o3": "BEGUN"},
        messages={"o3": msg("ROLLED_BACK", 2, "ROLLBACK")},
        effects={},
    )
    v = check(ops, {})
    assert v.holds, v
    assert (
        "A: 0 order(s) committed, 0 rolled back, 1 begun and never finished (rolled back by PostgreSQL)"
        in (v.findings)
    )
    assert "o3: 2 check-back(s): no answer (refused), ROLLBACK → ROLLED_BACK" in v.findings


def test_a_committed_order_whose_message_was_discarded_is_lost() -> None:
    h = H().op(100, PRODUCER, "ok", "local-txn", "o1", tick="committed")
    h.checks(1500, "o3", "UNKNOWN", "UNKNOWN")
    h.op(2501, BROKER, "ok", "discard", "o3", tick="discarded")
    h.op(4000, PRODUCER, "ok", "local-txn", "o3", tick="committed")
    ops = h.stores(
        orders={"o1": 10, "o3": 30},
        records={"o1": "COMMITTED", "o3": "COMMITTED"},
        messages={"o1": msg("COMMITTED"), "o3": msg("DISCARDED", 2, "UNKNOWN")},
        effects={"o1": 1},
    )
    v = check(ops, {})
    assert not v.holds
    assert v.summary == (
        "violated: A committed order o3 but B never applied it: the broker discarded it after 2 check(s), "
        "none answered COMMIT (last answer: UNKNOWN)"
    )
    assert v.actors == (PRODUCER, BROKER) and v.keys == ("o3",)
    assert v.at_ms == 2501  # the discard is the moment, not A's later commit
    assert [ops[i].f for i in v.ops] == ["discard"]


def test_a_message_applied_twice_after_a_redelivery_is_a_violation() -> None:
    h = H().op(100, CONSUMER, "ok", "apply", "o3", tick="applied")
    h.op(110, CONSUMER, "info", "crash", "", note="killed by signal 9")
    h.op(700, CONSUMER, "ok", "apply", "o3", tick="twice", rows=2)
    ops = h.stores(
        orders={"o3": 30},
        records={"o3": "COMMITTED"},
        messages={"o3": msg("COMMITTED")},
        effects={"o3": 2},
        marks=[],
    )
    v = check(ops, {})
    assert not v.holds
    assert v.summary == "violated: B applied o3 twice: redelivered, it was applied again — no mark stopped it"
    assert v.actors == (CONSUMER,) and v.at_ms == 700
    assert "B crashed (killed by signal 9)" in v.findings


def test_a_redelivery_skipped_by_its_mark_holds() -> None:
    h = H().op(100, CONSUMER, "ok", "apply", "o3", tick="applied")
    h.op(700, CONSUMER, "ok", "apply", "o3", tick="duplicate")
    ops = h.stores(
        orders={"o3": 30}, records={"o3": "COMMITTED"}, messages={"o3": msg("COMMITTED")}, effects={"o3": 1}
    )
    v = check(ops, {})
    assert v.holds, v
    assert "B skipped 1 redelivery(ies) by their mark: o3" in v.findings


def test_applied_without_a_commit_and_left_half_are_both_reported() -> None:
    h = H().op(300, CONSUMER, "ok", "apply", "o2", tick="applied")
    ops = h.stores(
        orders={"o4": 40},
        records={"o2": "ROLLED_BACK", "o4": "COMMITTED"},
        messages={"o2": msg("COMMITTED", 1, "COMMIT"), "o4": msg("HALF", 1, "no answer (timeout)")},
        effects={"o2": 1},
    )
    v = check(ops, {})
    assert not v.holds
    assert v.summary == (
        "violated: B applied o2 but A never committed it (its record: ROLLED_BACK; the broker: COMMITTED); "
        "1 more violation(s)"
    )
    assert v.at_ms == 300 and v.keys == ("o2", "o4")
    assert (
        "violation: A committed order o4 but B never applied it: it is still HALF at the end, "
        "undecided after 1 check(s) (last answer: no answer (timeout))"
    ) in v.findings


def test_a_history_without_the_stores_read_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="no read of the stores"):
        check(H().op(1, PRODUCER, "ok", "local-txn", "o1", tick="committed").ops, {})
