"""The txn-best-effort verdict, from hand-written histories: what A's orders, B's applied
rows and effects, and the notifications' hashes hold at the end, read into the history,
with the notifier's and B's narration. Held by notification, by reconciliation; a
payment missing from B (its notification given up on); applied twice; one A never
held; the wrong amount."""

from __future__ import annotations

import pytest

from collectors.runs import RUNNER, Op
from scenarios.messaging.best_effort_checker import NOTIFIER, RECEIVER, check


def note(state: str, attempt: int, last: str, attempts: int = 5) -> dict[str, str]:
    return {"state": state, "attempt": str(attempt), "attempts": str(attempts), "last": last}


class H:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: int, actor: str, kind: str, f: str, **kw: object) -> H:
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))  # type: ignore[arg-type]
        return self

    def attempt(self, t: int, msg: str, n: int, answer: str, tick: str = "notify") -> H:
        data = {"msg": msg, "tick": tick, "attempt": n, "answer": answer}
        return self.op(
            t, NOTIFIER, "info", "notify", key=msg, note=f"{msg}: attempt {n}: {answer}", data=data
        )

    def at_b(self, t: int, msg: str, tick: str, f: str = "notify") -> H:
        return self.op(
            t, RECEIVER, "ok", f, key=msg, value=tick, note=f"{msg}: {tick}", data={"msg": msg, "tick": tick}
        )

    def read(
        self,
        orders: dict[str, int],
        effects: list[tuple[str, int, str]],
        notes: dict[str, dict[str, str]],
        applied: list[tuple[str, int, str]] | None = None,
    ) -> list[Op]:
        """The stores at the end; B's applied rows are each id's first effect unless given."""
        if applied is None:
            firsts: dict[str, tuple[str, int, str]] = {}
            for e in effects:
                firsts.setdefault(e[0], e)
            applied = list(firsts.values())
        self.op(
            900,
            RUNNER,
            "ok",
            "orders",
            data={"orders": [[i, a, 1000 + n] for n, (i, a) in enumerate(orders.items())]},
        )

        def rows(rs: list[tuple[str, int, str]]) -> list[list[object]]:
            return [[i, a, v, 2000 + n] for n, (i, a, v) in enumerate(rs)]

        self.op(901, RUNNER, "ok", "receiver", data={"applied": rows(applied), "effects": rows(effects)})
        self.op(902, RUNNER, "ok", "notifications", data={"notifications": notes})
        return self.op(903, RUNNER, "ok", "db-read").ops


def test_every_payment_applied_once_by_notification_or_reconciliation_holds() -> None:
    h = H().attempt(10, "p1", 1, "success", "acked").at_b(9, "p1", "applied")
    for n in range(1, 5):
        h.attempt(100 * n, "p2", n, "refused")
    h.attempt(500, "p2", 5, "refused", "gave-up").at_b(700, "p2", "reconciled", "reconcile")
    h.attempt(20, "p3", 1, "no answer within 500 ms").at_b(15, "p3", "applied")
    h.at_b(330, "p3", "duplicate").attempt(331, "p3", 2, "success", "acked")
    ops = h.read(
        {"p1": 101, "p2": 102, "p3": 103},
        [("p1", 101, "notify#1"), ("p3", 103, "notify#1"), ("p2", 102, "reconcile")],
        {
            "p1": note("ACKED", 1, "attempt 1: success"),
            "p2": note("RECONCILED", 5, "reconciled: applied by B's query"),
            "p3": note("ACKED", 2, "attempt 2: success"),
        },
    )
    v = check(ops, {"reconcile": "on"})
    assert v.holds, v.summary
    assert v.summary == (
        "held: 3 payment(s) in A, each applied exactly once in B (2 by notification, 1 by reconciliation); "
        "1 repeat(s) skipped by B's dedup"
    )
    assert v.findings[0] == "notifications: 2 ACKED, 1 RECONCILED"
    assert (
        "p2: RECONCILED after 5/5 attempt(s) (refused ×5), then reconciled: applied by B's query"
        in v.findings
    )
    assert "p3: ACKED after 2/5 attempt(s) (no answer within 500 ms → success)" in v.findings
    assert "B skipped 1 repeat(s) its applied table already had: p3" in v.findings
    assert "applied by B's reconciliation (A's query): p2" in v.findings
    assert not any(f.startswith("p1:") for f in v.findings)  # acked at once: nothing to say


def test_a_payment_given_up_on_with_no_reconciliation_is_missing_from_b() -> None:
    h = H().attempt(10, "p1", 1, "success", "acked")
    for n in range(1, 5):
        h.attempt(100 * n, "p2", n, "refused")
    h.attempt(4800, "p2", 5, "refused", "gave-up")
    ops = h.read(
        {"p1": 101, "p2": 102},
        [("p1", 101, "notify#1")],
        {"p1": note("ACKED", 1, "attempt 1: success"), "p2": note("GAVE_UP", 5, "attempt 5: refused")},
    )
    v = check(ops, {"reconcile": "off"})
    assert not v.holds
    assert v.summary == (
        "violated: p2 (102) is paid in A and was never applied in B: its notification GAVE_UP after 5/5 "
        "attempt(s) (last: attempt 5: refused), and reconciliation is off"
    )
    assert v.actors == (RECEIVER, NOTIFIER) and v.keys == ("p2",) and v.at_ms == 4800
    assert v.ops == (5,)  # the give-up
    assert "notifications: 1 ACKED, 1 GAVE_UP" in v.findings


def test_given_up_and_never_found_by_reconciliation_says_so() -> None:
    ops = H().read({"p1": 101}, [], {"p1": note("GAVE_UP", 5, "attempt 5: refused")})
    v = check(ops, {"reconcile": "on"})
    assert not v.holds and v.summary.endswith("and reconciliation never found it")
    assert v.at_ms is None  # no narration of it: the stores alone say it
    assert "GAVE_UP and never marked RECONCILED: p1" in v.findings


def test_a_payment_applied_at_every_attempt_is_named_with_the_second_application() -> None:
    h = H().at_b(10, "p3", "applied").at_b(320, "p3", "twice").at_b(630, "p3", "twice")
    ops = h.read(
        {"p3": 103},
        [("p3", 103, "notify#1"), ("p3", 103, "notify#2"), ("p3", 103, "notify#3")],
        {"p3": note("ACKED", 3, "attempt 3: success")},
    )
    v = check(ops, {"reconcile": "on", "dedup": "off"})
    assert not v.holds
    assert v.summary == (
        "violated: p3 applied 3 times in B (+103 each time, by notification attempts 1, 2 and 3)"
    )
    assert v.actors == (RECEIVER,) and v.at_ms == 320


def test_applied_by_a_notification_and_again_by_reconciliation_is_twice() -> None:
    ops = H().read(
        {"p1": 101},
        [("p1", 101, "notify#4"), ("p1", 101, "reconcile")],
        {"p1": note("RECONCILED", 5, "reconciled: B held it already")},
    )
    v = check(ops, {})
    assert (
        v.summary
        == "violated: p1 applied twice in B (+101 each time, by notification attempt 4, reconciliation)"
    )


def test_a_payment_a_does_not_hold_and_a_wrong_amount_are_violations() -> None:
    ops = (
        H()
        .at_b(50, "p9", "applied")
        .read(
            {"p1": 101},
            [("p1", 99, "notify#1"), ("p9", 5, "notify#1")],
            {"p1": note("ACKED", 1, "attempt 1: success")},
        )
    )
    v = check(ops, {})
    assert not v.holds
    assert v.summary == "violated: p1 applied in B with 99, A holds 101; 1 more violation(s)"
    assert "violation: B applied p9 (+5, by notify#1), a payment A does not hold" in v.findings
    assert v.keys == ("p1", "p9") and v.ops == (0,)


def test_a_payment_with_no_notification_made_is_said() -> None:
    ops = H().read({"p1": 101}, [], {})
    v = check(ops, {"reconcile": "off"})
    assert v.summary == (
        "violated: p1 (101) is paid in A and was never applied in B: no notification was ever made for it"
    )
    assert "paid in A with no notification made: p1" in v.findings


def test_a_history_without_the_final_read_is_refused() -> None:
    with pytest.raises(ValueError, match="no read of the stores"):
        check(H().attempt(10, "p1", 1, "success", "acked").ops, {})
