"""The ordering invariant on hand-made histories: in order, none twice, none lost."""

from __future__ import annotations

import pytest

from collectors.runs import Op
from scenarios.ordering.checker import check


def history(*applied: tuple[str, int, str], emitted: dict[str, int]) -> list[Op]:
    ops = [
        Op(
            index=i,
            t_ms=10 * i,
            actor=worker,
            kind="ok",
            f="applied",
            key=order,
            data={"seq": seq, "worker": worker, "at_ms": 10 * i},
        )
        for i, (order, seq, worker) in enumerate(applied)
    ]
    ops.append(
        Op(
            index=len(ops),
            t_ms=10 * len(ops),
            actor="runner",
            kind="ok",
            f="emitted",
            data={"orders": emitted},
        )
    )
    return ops


def test_every_event_once_and_in_order_holds() -> None:
    verdict = check(
        history(
            ("o1", 1, "w1"), ("o2", 1, "w2"), ("o1", 2, "w1"), ("o2", 2, "w2"), emitted={"o1": 2, "o2": 2}
        )
    )
    assert verdict.holds and "4 event(s) of 2 order(s)" in verdict.summary


def test_an_event_before_its_predecessor_is_out_of_order() -> None:
    verdict = check(history(("o1", 2, "w2"), ("o1", 1, "w1"), emitted={"o1": 2}))
    assert not verdict.holds
    assert verdict.summary.startswith("violated: o1 event 2 applied by w2 before event 1")
    assert verdict.actors == ("w2",) and verdict.keys == ("o1",) and verdict.ops == (0,)
    assert verdict.at_ms == 0


def test_a_redelivered_event_applied_again_is_twice() -> None:
    verdict = check(history(("o1", 1, "w1"), ("o1", 2, "w1"), ("o1", 2, "w3"), emitted={"o1": 2}))
    assert not verdict.holds and "o1 event 2 applied twice (by w1, then by w3)" in verdict.summary
    assert verdict.ops == (1, 2) and verdict.actors == ("w1", "w3")


def test_an_event_never_applied_is_lost_and_findings_count_every_kind() -> None:
    verdict = check(history(("o1", 1, "w1"), ("o2", 2, "w2"), ("o2", 2, "w2"), emitted={"o1": 2, "o2": 2}))
    assert not verdict.holds
    assert verdict.findings == ("1 applied out of order, 1 applied twice, 2 never applied, over 2 order(s)",)
    # o1's event 2 and o2's event 1 never came; o2's event 2 was out of order, then twice
    assert verdict.summary.startswith("violated: o2 event 2 applied by w2 before event 1")


def test_a_failed_apply_is_not_an_application() -> None:
    ops = history(("o1", 1, "w1"), emitted={"o1": 1})
    ops.insert(0, Op(index=99, t_ms=0, actor="w2", kind="fail", f="applied", key="o1", data={"seq": 1}))
    assert check(ops).holds


def test_a_history_without_the_producers_account_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="no account of the events emitted"):
        check([Op(index=0, t_ms=0, actor="w1", kind="ok", f="applied", key="o1", data={"seq": 1})])
