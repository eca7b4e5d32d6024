"""Pure pieces of the lock scenarios: contention measures, FIFO judging, session and
RedLock lanes, RedLock attempt cells."""

from __future__ import annotations

import pytest

from collectors.runs import VERDICT_LINE, Op, Verdict, lanes, legend
from scenarios.kit.rounds import percentile
from scenarios.locks.measure import Sample, contention
from scenarios.locks.mutex import with_fifo
from scenarios.locks.redlock import Attempt


def test_fifo_hand_offs_and_latency() -> None:
    # three clients queue at 0, 1, 2 ms and get the lock in that order
    fifo = [Sample("a", 0, 10, 2, 0), Sample("b", 1, 20, 3, 1), Sample("c", 2, 30, 3, 1)]
    stats = contention(fifo)
    assert stats.fifo_share == 1.0 and stats.handoffs == 2
    assert stats.worst_ms == 28 and stats.requests_per == pytest.approx(8 / 3)
    # the last to queue gets it first: no hand-off goes to the longest waiter
    unfair = [Sample("a", 0, 30, 9, 9), Sample("b", 1, 20, 5, 5), Sample("c", 2, 10, 1, 0)]
    assert contention(unfair).fifo_share == 0.0
    assert contention([]).acquisitions == 0


def test_percentiles_are_inclusive_and_bounded() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def grant(index: int, t: int, actor: str, seq: int, wakeups: int = 1) -> Op:
    return Op(index, t, actor, "ok", "acquire", data={"seq": seq, "wakeups": wakeups, "requests": 4})


HELD = Verdict(holds=True, invariant="mutual exclusion", summary="held: 3 writes")


def test_grants_in_queue_order_hold_fifo_and_report_the_cost() -> None:
    ops = [grant(0, 0, "a", 1, 0), grant(1, 5, "b", 2), grant(2, 9, "c", 3)]
    verdict = with_fifo(HELD, ops, "predecessor")
    assert verdict.holds and verdict.invariant == "mutual exclusion and FIFO"
    assert any("2 wake-ups (0.7 per acquisition, watch=predecessor)" in f for f in verdict.findings)


def test_a_grant_out_of_queue_order_violates_fifo() -> None:
    ops = [grant(0, 0, "a", 1), grant(1, 5, "c", 3), grant(2, 9, "b", 2)]
    verdict = with_fifo(HELD, ops, "predecessor")
    assert not verdict.holds and verdict.actors == ("b", "c") and verdict.at_ms == 9


def test_session_states_and_redlock_attempts_on_the_lanes() -> None:
    ops = [
        Op(0, 0, "zk-1", "info", "session", value="CONNECTED"),
        Op(1, 10, "zk-1", "info", "session", value="SUSPENDED"),
        Op(2, 30, "zk-1", "info", "session", value="LOST"),
        Op(3, 50, "zk-1", "info", "session", value="CONNECTED"),
        Op(4, 60, "r-1", "info", "attempt", value='{"cells": {}, "held": true}', note="■■□"),
        Op(5, 70, "r-1", "info", "attempt", value='{"cells": {}, "held": false}', note="□□■"),
    ]
    by_actor = {lane.actor: lane for lane in lanes(ops)}
    spans = {s.kind: (s.start_ms, s.end_ms) for s in by_actor["zk-1"].spans}
    assert spans == {"suspended": (10, 30), "lost": (30, 50)}
    assert [t.kind for t in by_actor["zk-1"].ticks] == ["lost"]
    assert [(t.kind, t.label) for t in by_actor["r-1"].ticks] == [("granted", "■■□"), ("refused", "□□■")]


def test_redlock_attempt_cells() -> None:
    attempt = Attempt(
        value="v",
        cells={"redis-1": "granted", "redis-2": "error", "redis-3": "denied"},
        elapsed_ms=12,
        validity_ms=1966,
        held=False,
    )
    assert attempt.row() == "■✖□" and attempt.granted == 1


def test_an_instance_serving_two_requests_at_once_draws_both() -> None:
    ops = [
        Op(0, 100, "pay-2", "invoke", "handle", key="order-2", data={"span": "r1"}),
        Op(1, 900, "pay-2", "invoke", "handle", key="order-2", data={"span": "r2"}),
        Op(2, 950, "pay-2", "ok", "charge", key="order-2", data={"tick": "charge", "span": "r2"}),
        Op(3, 960, "pay-2", "ok", "handle", key="order-2", data={"span": "r2"}),
        Op(4, 4000, "pay-2", "ok", "charge", key="order-2", data={"tick": "charge", "span": "r1"}),
        Op(5, 4010, "pay-2", "ok", "handle", key="order-2", data={"span": "r1"}),
    ]
    (lane,) = lanes(ops)
    handles = sorted((s.start_ms, s.end_ms) for s in lane.spans if s.kind == "handle")
    assert handles == [(100, 4010), (900, 960)]  # the slow one is not cut short by the second
    assert [t.kind for t in lane.ticks] == ["charge", "charge"]


def test_the_legend_names_the_verdict_line_only_when_a_moment_broke_it() -> None:
    drawn = lanes([grant(0, 0, "a", 1), Op(1, 20, "a", "ok", "write", data={"fence": 1})])
    broken = Verdict(holds=False, invariant="mutual exclusion", summary="violated", at_ms=20)
    assert legend(drawn, broken)[-1] == VERDICT_LINE
    assert VERDICT_LINE not in legend(drawn, HELD)
    assert VERDICT_LINE not in legend(drawn, Verdict(holds=False, invariant="x", summary="y"))  # no moment
    assert VERDICT_LINE not in legend(drawn)  # still running
