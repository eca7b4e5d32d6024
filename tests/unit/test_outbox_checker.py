"""The txn-outbox verdict, from hand-written histories: the stores' contents at the end
(A's orders and outbox, the stream's entries, B's effects and inbox) read into the
history, and the services' own narration. Held with redeliveries the inbox dropped; a
message applied twice; a committed order never applied; a rolled-back order published;
an effect nobody committed; the wrong amount; the findings (backlog, claims, latency)."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.runs import NEMESIS, RUNNER, Op
from scenarios.messaging.outbox_checker import applied_by, check, stored


class H:
    """A history: ``commit`` narrates A's commit and puts the rows in A's tables, ``publish``
    the relay's XADD (an entry), ``apply`` B's effect (and inbox row); ``read`` ends it
    with what the stores hold."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.orders: list[list[Any]] = []
        self.outbox: list[list[Any]] = []
        self.entries: list[list[str]] = []
        self.effects: list[list[Any]] = []
        self.inbox: list[list[str]] = []

    def op(self, t: int, actor: str, kind: str, f: str, **kw: Any) -> H:
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))
        return self

    def commit(self, t: int, msg: str, amount: int = 10, sent: bool = True) -> H:
        self.orders.append([msg, amount])
        self.outbox.append([msg, sent, t, t + 5 if sent else None])
        return self.op(t, "A", "ok", "order", key=msg, data={"msg": msg, "tick": "committed"})

    def roll_back(self, t: int, msg: str) -> H:
        self.op(t, "client", "fail", "order", key=msg, value="rolled-back", data={"msg": msg})
        return self.op(t, "A", "fail", "order", key=msg, data={"msg": msg, "tick": "rolled-back"})

    def publish(self, t: int, msg: str, src: str = "relay") -> H:
        self.entries.append([f"{t}-0", msg])
        return self.op(t, "relay", "ok", "publish", key=msg, src=src, data={"msg": msg, "tick": "published"})

    def apply(self, t: int, msg: str, by: str = "B-1", amount: int = 10, inbox: bool = True) -> H:
        if inbox and any(m == msg for m, _ in self.inbox):
            return self.op(t, by, "ok", "apply", key=msg, src=by, data={"msg": msg, "tick": "duplicate"})
        again = any(e[0] == msg for e in self.effects)
        self.effects.append([msg, msg, amount, by, t])
        if inbox:
            self.inbox.append([msg, by])
        tick = "twice" if again else "applied"
        return self.op(t, by, "ok", "apply", key=msg, src=by, data={"msg": msg, "tick": tick})

    def read(self, t: int = 900) -> list[Op]:
        for f, data in (
            ("orders", {"rows": self.orders}),
            ("outbox", {"rows": self.outbox}),
            ("stream", {"entries": self.entries, "pending": 0}),
            ("effects", {"rows": self.effects}),
            ("inbox", {"rows": self.inbox}),
        ):
            self.op(t, RUNNER, "ok", f, data=data)
        self.op(t, RUNNER, "ok", "db-read")
        return self.ops


def delivered(h: H, *msgs: str, t: int = 10) -> H:
    for i, msg in enumerate(msgs):
        h.commit(t + i * 10, msg).publish(t + i * 10 + 3, msg).apply(t + i * 10 + 6, msg)
    return h


def test_held_each_committed_order_applied_once_and_the_inbox_dropped_the_redelivery() -> None:
    h = delivered(H(), "o1", "o2", "o3")
    h.publish(200, "o2", src="relay#1").apply(210, "o2", by="B-2")  # the relay published it again
    v = check(h.read(), {})
    assert v.holds, v
    assert v.summary == (
        "held: 3 committed order(s), each applied exactly once by B; 1 redelivery(ies) skipped by the inbox"
    )
    assert "published more than once (at least once: the inbox's job): o2 ×2" in v.findings
    assert "1 redelivery(ies) skipped by B's inbox: o2 at B-2" in v.findings
    assert "commit → effect (narrated): p50 6 ms, max 6 ms over 3 message(s)" in v.findings


def test_a_message_applied_twice_names_it_its_consumers_and_its_moment() -> None:
    h = delivered(H(), "o1", "o2")
    h.publish(200, "o2", src="relay#1").apply(250, "o2", by="B-2", inbox=False)
    v = check(h.read(), {})
    assert not v.holds
    assert v.summary == (
        "violated: o2 applied ×2 by B-1 and B-2: A committed → published ×2 → row marked sent → "
        "applied ×2 by B-1 and B-2"
    )
    assert v.keys == ("o2",) and v.actors == ("B-1", "B-2")
    assert v.at_ms == 250
    assert h.ops[v.ops[0]].data == {"msg": "o2", "tick": "twice"}


def test_a_committed_order_never_applied_is_lost() -> None:
    h = delivered(H(), "o1")
    h.commit(50, "o2", sent=False)
    v = check(h.read(), {})
    assert not v.holds
    assert v.summary == (
        "violated: o2 committed by A but never applied by B: A committed → never published → "
        "row never marked sent → never applied"
    )
    assert v.at_ms == 50 and v.actors == ("A",)
    assert "1 outbox row(s) never marked sent: o2" in v.findings


def test_a_rolled_back_order_that_nobody_saw_holds() -> None:
    h = delivered(H(), "o1", "o3")
    h.roll_back(15, "o2")
    v = check(h.read(), {})
    assert v.holds, v
    assert v.summary.endswith("; 1 rolled back, never published")
    assert v.findings[0] == (
        "2 order(s) committed with their outbox row, 1 rolled back (o2); 2 stream entr(ies) published"
    )


def test_a_rolled_back_order_published_and_applied_is_a_violation() -> None:
    h = delivered(H(), "o1")
    h.roll_back(15, "o2")
    h.publish(40, "o2").apply(45, "o2")
    v = check(h.read(), {})
    assert not v.holds
    assert v.summary == "violated: o2 was rolled back by A, yet published ×1, applied by B-1"
    assert v.at_ms == 40 and v.keys == ("o2",)


def test_an_effect_for_an_order_never_committed() -> None:
    h = delivered(H(), "o1")
    h.publish(40, "o9").apply(45, "o9", by="B-2")
    v = check(h.read(), {})
    assert not v.holds
    assert v.summary == (
        "violated: o9 was never committed by A, yet: A: no order → published → no row → applied by B-2"
    )


def test_the_wrong_amount_applied() -> None:
    h = H().commit(10, "o1", amount=25).publish(12, "o1").apply(14, "o1", amount=20)
    v = check(h.read(), {})
    assert not v.holds
    assert v.summary == "violated: o1 applied with amount 20, A committed 25"


def test_findings_say_how_far_the_backlog_grew_and_who_claimed_what() -> None:
    h = delivered(H(), "o1", "o2")
    for t, unsent, oldest in ((100, 3, 40), (350, 12, 290), (600, 0, 0)):
        h.op(t, RUNNER, "info", "backlog", value=str(unsent), data={"unsent": unsent, "oldest_ms": oldest})
    h.op(300, "B-1", "info", "crash", note="killed by signal 9", data={"source": "B-1"})
    h.op(700, "B-2", "info", "claim", key="o2", data={"msg": "o2", "tick": "claim"})
    h.op(100, NEMESIS, "info", "fault", value="broker-down")
    v = check(h.read(), {})
    assert v.holds
    assert (
        "outbox backlog peaked at 12 unsent row(s) at 350 ms (the oldest 290 ms old), 0 at the last look "
        "(600 ms)"
    ) in v.findings
    assert "B-2 claimed 1 pending entr(ies) of a consumer that died (XAUTOCLAIM): o2" in v.findings
    assert "B-1 crashed at 300 ms (killed by signal 9)" in v.findings


def test_no_read_of_the_stores_is_no_verdict() -> None:
    with pytest.raises(ValueError, match="no read of the stores"):
        check(delivered(H(), "o1").ops, {})


def test_messages_are_in_their_order() -> None:
    h = delivered(H(), "o10", "o2", "o1")
    assert list(stored(h.read())) == ["o1", "o2", "o10"]


@pytest.mark.parametrize(
    ("effects", "says"),
    [
        ([("B-1", 1)], "by B-1"),
        ([("B-1", 1), ("B-2", 1)], "×2 by B-1 and B-2"),
        ([("B-2", 1), ("B-2", 1)], "×2, both by B-2"),
        ([("B-2", 1)] * 3, "×3, all by B-2"),
        ([("B-1", 1), ("B-2", 1), ("B-1", 1)], "×3 by B-1 (×2) and B-2"),
    ],
)
def test_applied_by(effects: list[tuple[str, int]], says: str) -> None:
    assert applied_by(effects) == says
