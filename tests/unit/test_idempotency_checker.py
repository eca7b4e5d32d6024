"""The idempotency checker alone, on hand-written histories; the marks and services families
alone (a lapsed lease shows STALE, a quiet heartbeat silent, without any new event); and the
run's own check that the stored history holds what it recorded."""

from __future__ import annotations

import pytest

from collectors.layouts.coordscope import mark_key, service_key
from collectors.records import KeyRecord
from collectors.runs import RUNNER, Op
from collectors.state import State
from scenarios.idempotency.payment import check
from scenarios.kit.history import History, source_of


class H:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: int, actor: str, kind: str, f: str, **kw: object) -> H:
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))  # type: ignore[arg-type]
        return self

    def charge(
        self, t: int, order: str, charge_id: int, instance: str, request: str, marked: bool = True
    ) -> H:
        data: dict[str, object] = {
            "charge_id": charge_id,
            "instance": instance,
            "request": request,
            "at_ms": t,
        }
        if marked:  # the redis-mark guard: the mark that should have stopped a second charge
            data["mark"] = f"m:{order}"
        return self.op(900, RUNNER, "ok", "ledger", key=order, value=str(charge_id), data=data)

    def read(self) -> H:
        return self.op(901, RUNNER, "ok", "ledger-read", key="coordscope_r.ledger")


def paid(h: H, order: str, charge_id: int, t: int = 10) -> H:
    h.op(t, "client-1", "invoke", "pay", key=order, data={"instance": "pay-1"})
    return h.op(t + 5, "client-1", "ok", "pay", key=order, data={"charge_id": charge_id, "instance": "pay-1"})


def test_one_charge_per_order_holds() -> None:
    h = paid(paid(H(), "order-1", 1), "order-2", 2, t=20)
    h.charge(12, "order-1", 1, "pay-1", "client-1:order-1:1").charge(
        22, "order-2", 2, "pay-2", "client-1:order-2:1"
    )
    verdict = check(h.read().ops, {})
    assert verdict.holds and "2 charge(s) for 2 order(s)" in verdict.summary
    assert verdict.keys == ("coordscope_r.ledger",)


def test_a_second_charge_names_the_order_both_charges_the_instances_and_the_moment() -> None:
    h = paid(H(), "order-2", 1)
    h.op(30, "client-1", "info", "pay", key="order-2", note="no reply (timeout)", data={"tick": "timeout"})
    h.charge(12, "order-2", 1, "pay-2", "client-1:order-2:1").charge(
        640, "order-2", 5, "pay-3", "client-1:order-2:2"
    )
    verdict = check(h.read().ops, {})
    assert not verdict.holds
    assert "order-2 was charged 2 times" in verdict.summary
    assert "#1 by pay-2 at t=12 ms" in verdict.summary and "#5 by pay-3 at t=640 ms" in verdict.summary
    assert verdict.actors == ("client-1", "pay-2", "pay-3") and verdict.at_ms == 640
    assert verdict.keys == ("m:order-2", "coordscope_r.ledger") and len(verdict.ops) == 2


def test_without_a_mark_the_verdict_names_only_the_ledger() -> None:
    h = paid(H(), "order-2", 1)
    h.charge(12, "order-2", 1, "pay-2", "client-1:order-2:1", marked=False)
    h.charge(640, "order-2", 5, "pay-3", "client-1:order-2:2", marked=False)
    verdict = check(h.read().ops, {})
    assert not verdict.holds and verdict.keys == ("coordscope_r.ledger",)


def test_an_answer_naming_a_charge_the_ledger_does_not_hold_is_inconsistent() -> None:
    h = paid(H(), "order-1", 7)
    h.charge(12, "order-1", 1, "pay-1", "r")
    verdict = check(h.read().ops, {})
    assert not verdict.holds and "not in the ledger" in verdict.summary


def test_without_a_ledger_read_there_is_no_verdict() -> None:
    with pytest.raises(ValueError, match="no read of the ledger"):
        check(paid(H(), "order-1", 1).ops, {})


def mark_record(fields: dict[str, str], ttl: int = 4000, read_at: int = 1000) -> KeyRecord:
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    return KeyRecord(
        node="redis-1",
        raw_key=mark_key("run-1:order-7").encode(),
        type="hash",
        ttl_ms=ttl,
        read_at_ms=read_at,
        fields=raw,
        size=len(raw),
    )


def test_an_in_progress_mark_turns_stale_when_its_lease_ends_without_an_event() -> None:
    now = [1000]
    state = State(clock=lambda: now[0])
    state.apply_key(
        mark_record({"state": "IN_PROGRESS", "owner": "pay-2", "fingerprint": "ab12", "lease_until": "3000"})
    )
    (mark,) = state.entities("mark")
    assert getattr(mark, "state", "") == "IN_PROGRESS" and getattr(mark, "lease_expires_at_ms", 0) == 3000
    now[0] = 2999
    state.refresh_counts()
    assert getattr(state.entities("mark")[0], "state", "") == "IN_PROGRESS"
    now[0] = 3000
    state.refresh_counts()
    assert getattr(state.entities("mark")[0], "state", "") == "STALE"
    assert any("lease of pay-2 ended" in getattr(e, "text", "") for e in state.drain())
    state.apply_key(
        mark_record(
            {
                "state": "COMPLETED",
                "owner": "pay-3",
                "fingerprint": "ab12",
                "code": "200",
                "body": '{"charge_id": 5}',
            }
        )
    )
    (mark,) = state.entities("mark")
    assert getattr(mark, "state", "") == "COMPLETED" and getattr(mark, "response", "").startswith("200")
    assert any("taken over by pay-3 from pay-2" in getattr(e, "text", "") for e in state.drain())


def test_a_service_whose_heartbeat_stops_is_shown_silent() -> None:
    now = [10_000]
    state = State(clock=lambda: now[0])
    fields = {"name": "pay-1", "role": "payment-service", "pid": "4242", "status": "up", "alive_ms": "10000"}
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    state.apply_key(
        KeyRecord(
            node="redis-3",
            raw_key=service_key("run-1", "pay-1").encode(),
            type="hash",
            ttl_ms=30_000,
            read_at_ms=10_000,
            fields=raw,
            size=len(raw),
        )
    )
    (service,) = state.entities("service")
    assert getattr(service, "status", "") == "up" and getattr(service, "pid", 0) == 4242
    now[0] = 13_000  # SIGSTOP: no heartbeat for 3 s
    state.refresh_counts()
    (service,) = state.entities("service")
    assert getattr(service, "status", "") == "silent" and "no heartbeat" in getattr(service, "detail", "")


class _Client:
    pass


def test_the_run_notices_when_the_store_lost_or_changed_its_ops() -> None:
    history = History(_Client(), "run-1")  # type: ignore[arg-type]
    ops = [history.record("client-1", "invoke", "acquire"), history.record("client-1", "ok", "acquire")]
    assert history.missing(list(ops)) == ""
    assert "lost 1 of the run's 2 operations (the first: #1" in history.missing(ops[:1])
    assert "lost 1 of the run's 2 operations (the first: #0" in history.missing(ops[1:])
    assert "out of order" in history.missing([ops[1], ops[0]])
    changed = [ops[0], Op(index=1, t_ms=ops[1].t_ms, actor="client-2", kind="ok", f="acquire", n=1)]
    assert "differs from what the actors did at operation #1" in history.missing(changed)
    service = Op(index=2, t_ms=5, actor="pay-1", kind="ok", f="charge", src="pay-1", n=1)
    assert "lost operations of pay-1 (#0)" in history.missing([*ops, service])


def test_a_killed_life_may_end_with_writes_cut_but_another_life_may_not() -> None:
    """Two requests of pay-1 write #3 and #4 at once; a SIGKILL lands between them: #3
    never reaches the store. That is the crash; a hole in pay-1#1, the next life, is not."""
    history = History(_Client(), "run-1")  # type: ignore[arg-type]
    first = [
        Op(index=i, t_ms=i, actor="pay-1", kind="info", f="handle", src="pay-1", n=n)
        for i, n in enumerate((0, 1, 2, 4))
    ]
    crash = history.record("pay-1", "info", "crash", data={"source": source_of("pay-1", 0)})
    assert history.missing([crash, *first]) == ""
    unkilled = History(_Client(), "run-2")  # type: ignore[arg-type]
    assert "lost operations of pay-1 (#3)" in unkilled.missing(first)  # no crash: the store lost it
    second = Op(index=9, t_ms=9, actor="pay-1", kind="info", f="handle", src=source_of("pay-1", 1), n=1)
    assert "lost operations of pay-1#1 (#0)" in history.missing([crash, *first, second])
