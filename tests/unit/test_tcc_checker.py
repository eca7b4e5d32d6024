"""The txn-tcc verdict, from hand-written histories: what the databases hold at the end
(balances, fence logs, effects) read into the history, and the participants' own
narration. Held; a phase applied twice; a hanging Try; a Try never ended; money frozen
or created; a transfer confirmed on one side only."""

from __future__ import annotations

import pytest

from collectors.runs import RUNNER, Op
from scenarios.transactions.tcc_checker import COORDINATOR, check

Effect = tuple[str, str, str, str, int, int]
"""(txn, branch, phase, account, Δavailable, Δfrozen), as the run reads them."""


def debit(txn: str, *phases: str, account: str = "a", amount: int = 10) -> list[Effect]:
    deltas = {"try": (-amount, amount), "confirm": (0, -amount), "cancel": (amount, -amount)}
    return [(txn, "pg-1", ph, account, *deltas[ph]) for ph in phases]


def credit(txn: str, *phases: str, account: str = "b", amount: int = 10) -> list[Effect]:
    deltas = {"try": (0, 0), "confirm": (amount, 0), "cancel": (0, 0)}
    return [(txn, "pg-2", ph, account, *deltas[ph]) for ph in phases]


class H:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.op(0, RUNNER, "ok", "seeded", data={"total": 4000, "participants": ["pg-1", "pg-2"]})

    def op(self, t: int, actor: str, kind: str, f: str, **kw: object) -> H:
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))  # type: ignore[arg-type]
        return self

    def transfer(self, t: int, txn: str, outcome: str, note: str = "") -> H:
        kind = "ok" if outcome == "confirmed" else "fail"
        return self.op(t, COORDINATOR, kind, "transfer", key=txn, value=outcome, note=note or outcome)

    def read(
        self,
        name: str,
        effects: list[Effect],
        fence: list[list[str]] | None = None,
        frozen: int = 0,
        opened: int = 1000,
    ) -> H:
        """The participant's accounts ``a`` and ``b`` as its effects left them (plus ``frozen``
        unexplained by any of them, taken from ``a``)."""
        held = {acct: [opened, 0] for acct in ("a", "b")}
        for _, _, _, acct, da, df in effects:
            held[acct][0] += da
            held[acct][1] += df
        held["a"] = [held["a"][0] - frozen, held["a"][1] + frozen]
        available = sum(av for av, _ in held.values())
        return self.op(
            900,
            RUNNER,
            "ok",
            "balances",
            key=name,
            value=str(available),
            data={
                "accounts": held,
                "available": available,
                "frozen": sum(fr for _, fr in held.values()),
                "fence": fence or [],
                "effects": [list(e) for e in effects],
            },
        )

    def done(self) -> list[Op]:
        return self.op(901, RUNNER, "ok", "db-read").ops


def test_confirmed_and_cancelled_transfers_with_an_empty_rollback_hold() -> None:
    h = H().transfer(10, "t1", "confirmed")
    h.op(20, COORDINATOR, "info", "retry", key="t1", value="confirm", data={"branch": "pg-1", "attempt": 1})
    h.op(21, COORDINATOR, "info", "retry", key="t1", value="confirm", data={"branch": "pg-1", "attempt": 2})
    h.transfer(30, "t2", "cancelled", "pg-1: no answer within 800 ms")
    h.op(40, "pg-1", "ok", "cancel", key="t2", value="suspended", data={"tick": "suspended"})
    h.op(50, "pg-1", "fail", "try", key="t2", note="t2: Try refused: the fence holds SUSPENDED for it",
         data={"tick": "fenced"})  # fmt: skip
    h.read(
        "pg-1",
        debit("t1", "try", "confirm"),
        fence=[["t1", "pg-1", "CONFIRMED"], ["t2", "pg-1", "SUSPENDED"]],
    )
    h.read("pg-2", credit("t1", "try", "confirm") + credit("t2", "try", "cancel"))
    v = check(h.done(), {})
    assert v.holds, v.summary
    assert v.summary.startswith("held: 1 transfer(s) confirmed and 1 cancelled on every branch")
    assert v.summary.endswith("4000 conserved")
    assert "1 transfer(s) confirmed, 1 cancelled (t2: pg-1: no answer within 800 ms)" in v.findings
    assert "1 empty rollback(s) recorded SUSPENDED: t2 on pg-1" in v.findings
    assert (
        "1 call(s) stopped by the fence: pg-1: t2: Try refused: the fence holds SUSPENDED for it"
        in v.findings
    )
    assert "t1: Confirm on pg-1 sent 3 times (2 failed)" in v.findings


def test_a_confirm_applied_twice_is_named_with_the_money_it_made() -> None:
    h = H().transfer(10, "t4", "confirmed")
    h.op(30, "pg-2", "ok", "confirm", key="t4", value="applied", data={"tick": "commit"})
    h.op(40, "pg-2", "ok", "confirm", key="t4", value="again", data={"tick": "twice"})
    h.read("pg-1", debit("t4", "try", "confirm"))
    h.read("pg-2", credit("t4", "try", "confirm", "confirm"))
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary == (
        "violated: t4 Confirm applied twice on pg-2: it credited 10 to pg-2/b each time; 1 more violation(s)"
    )
    assert v.actors == ("pg-2",) and v.keys == ("t4",) and v.at_ms == 40
    assert "violation: the accounts hold 4010 available, 4000 was put in (+10)" in v.findings


def test_a_try_after_its_cancel_is_a_hanging_try_even_when_the_balances_hide_it() -> None:
    # fence off: the empty rollback released 10 never frozen, then the late Try froze them again
    h = H().transfer(10, "t3", "cancelled", "pg-1: no answer within 800 ms")
    h.op(2400, "pg-1", "ok", "try", key="t3", value="late", data={"tick": "tried"})
    h.read("pg-1", debit("t3", "cancel", "try"))
    h.read("pg-2", credit("t3", "try", "cancel"))
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary == (
        "violated: t3's Try on pg-1 ran after its Cancel (a hanging Try): it froze 10 on pg-1/a that no "
        "Confirm or Cancel will release; the balances hide it only because that Cancel, with no Try "
        "before it, had released 10 on pg-1/a"
    )
    assert v.at_ms == 2400 and v.actors == ("pg-1",)


def test_an_empty_rollback_applied_releases_money_never_frozen() -> None:
    h = H().transfer(10, "t2", "cancelled")
    h.read("pg-1", debit("t2", "cancel"))
    h.read("pg-2", credit("t2", "try", "cancel"))
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary == (
        "violated: t2's Cancel on pg-1 ran with no Try before it (an empty rollback): it released 10 on "
        "pg-1/a, never frozen; 2 more violation(s)"
    )
    assert "violation: frozen below zero: -10 on pg-1/a, by t2's Cancel with no Try" in v.findings
    assert "violation: the accounts hold 4010 available, 4000 was put in (+10)" in v.findings


def test_a_try_never_confirmed_nor_cancelled_leaves_funds_frozen() -> None:
    h = H().transfer(10, "t5", "unfinished")
    h.op(20, "pg-1", "ok", "try", key="t5", value="applied", data={"tick": "tried"})
    h.read("pg-1", debit("t5", "try"))
    h.read("pg-2", credit("t5", "try"))
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary.startswith(
        "violated: t5's Try on pg-1 was never confirmed nor cancelled: it froze 10 on pg-1/a, for ever"
    )
    assert v.at_ms == 20
    never = "violation: t5's Try on pg-2 was never confirmed nor cancelled: it changed no balance on pg-2/b"
    assert f"{never}, for ever" in v.findings
    assert "violation: funds frozen for ever: 10 on pg-1/a, by t5's Try, never ended" in v.findings
    assert "0 transfer(s) confirmed, 0 cancelled, 1 unfinished" in v.findings


def test_funds_frozen_that_no_branch_explains_are_a_leak() -> None:
    h = H().read("pg-1", [], frozen=10).read("pg-2", [])
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary == (
        "violated: funds frozen for ever: 10 on pg-1/a, by nobody known; 1 more violation(s)"
    )
    assert "violation: the accounts hold 3990 available, 4000 was put in (-10)" in v.findings


def test_money_created_with_every_branch_in_order_is_a_violation() -> None:
    h = H().transfer(10, "t1", "confirmed")
    h.read("pg-1", debit("t1", "try", "confirm"), opened=1005).read("pg-2", credit("t1", "try", "confirm"))
    v = check(h.done(), {})
    assert not v.holds and v.summary == "violated: the accounts hold 4010 available, 4000 was put in (+10)"


def test_a_transfer_confirmed_on_one_participant_only_is_split() -> None:
    h = H().read("pg-1", debit("t6", "try", "confirm")).read("pg-2", credit("t6", "try", "cancel"))
    v = check(h.done(), {})
    assert not v.holds
    assert v.summary.startswith("violated: t6 was confirmed on pg-1 but not on pg-2")


def test_a_history_without_the_final_read_is_refused() -> None:
    with pytest.raises(ValueError, match="no read of the participants"):
        check(H().ops, {})
