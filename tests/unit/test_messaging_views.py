"""What the screens show of messaging: half messages and notifications (the messages
panel), an outbox table's backlog (a queue), and each message's journey across a run."""

from __future__ import annotations

import pytest

from collectors.families.base import Cell, Family
from collectors.families.messages import Message, Messages
from collectors.families.queues import Queue, Queues
from collectors.journeys import journeys
from collectors.layouts import messaging, postgres_outbox
from collectors.records import KeyRecord
from collectors.runs import Op, lanes
from collectors.state import State

RUN = "r1"


def hash_record(key: str, fields: dict[str, str], node: str = "redis-1", read_at: int = 5000) -> KeyRecord:
    return KeyRecord(
        node=node,
        raw_key=key.encode(),
        type="hash",
        ttl_ms=None,
        read_at_ms=read_at,
        fields={k.encode(): v.encode() for k, v in fields.items()},
    )


def messages(state: State) -> dict[str, Message]:
    return {m.msg_id: m for m in state.entities("message") if isinstance(m, Message)}


def cells(family: type[Family], entity: object) -> dict[str, Cell]:
    return {c.key: c.cell(entity) for c in family.columns}


def test_a_half_message_shows_its_checks_and_the_next_one_counting_down() -> None:
    state = State()
    far = 2**41  # a next check well after now
    state.apply_key(
        hash_record(
            messaging.half_key(RUN, "o3"),
            {"state": "HALF", "topic": "orders", "producer": "A", "checks": "2", "max_checks": "5",
             "half_ms": "4000", "next_check_ms": str(far), "last_answer": "UNKNOWN"},
        )
    )  # fmt: skip
    m = messages(state)["o3"]
    assert (m.kind, m.state, m.tries, m.max_tries, m.next_ms, m.last) == (
        messaging.HALF_KIND, "HALF", 2, 5, far, "UNKNOWN"
    )  # fmt: skip
    row = cells(Messages, m)
    assert row["tries"].plain == "check 2/5"
    assert row["next"].until_ms == far  # the screens count it down
    assert [p.tone for p in row["state"].pieces] == ["warn"]
    # decided: no next check, whatever the hash still says
    state.apply_key(
        hash_record(
            messaging.half_key(RUN, "o3"),
            {
                "state": "COMMITTED",
                "checks": "3",
                "max_checks": "5",
                "next_check_ms": "7000",
                "decided_ms": "7100",
            },
        )
    )
    m = messages(state)["o3"]
    assert m.state == "COMMITTED" and m.next_ms is None and cells(Messages, m)["next"].plain == "–"


def test_a_notification_past_its_time_shows_due_now() -> None:
    state = State()
    state.apply_key(
        hash_record(
            messaging.notification_key(RUN, "p7"),
            {"state": "NOTIFYING", "attempt": "3", "attempts": "6", "next_at_ms": "4500",
             "ladder": "300,300,600", "target": "http://127.0.0.1:1/notify", "last": "refused",
             "created_ms": "1000"},
        )
    )  # fmt: skip
    m = messages(state)["p7"]
    row = cells(Messages, m)
    assert row["tries"].plain == "attempt 3/6"
    assert row["next"].plain == "due now" and row["next"].until_ms is None  # 4500 is long past
    assert "ladder 300,300,600 ms" in m.detail


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"state": "\x1b[31mHALF"},
        {"checks": "many", "next_check_ms": "-5"},
        {"state": "HALF", "half_ms": "x"},
    ],
)
def test_garbage_in_a_message_hash_never_breaks_the_state(fields: dict[str, str]) -> None:
    state = State()
    state.apply_key(hash_record(messaging.half_key(RUN, "o1"), fields))
    (m,) = messages(state).values()
    assert m.tries == 0 and m.next_ms is None


def test_keys_of_other_shapes_are_not_messages() -> None:
    assert (
        messaging.recognise(hash_record("coordscope:rmq:r1:msg:o1", {"state": "HALF"})) is None
    )  # no hash tag
    assert messaging.recognise(hash_record(messaging.half_schedule_key(RUN), {})) is None
    assert messaging.recognise(hash_record("rmq:{r1}:msg:o1", {"state": "HALF"})) is None


def outbox_record(unsent: int, total: int, oldest: int | None, read_at: int = 9000) -> KeyRecord:
    fields = {"unsent": str(unsent), "total": str(total), "database": "coordscope",
              "oldest_ms": "" if oldest is None else str(oldest), "marker": "sent_at IS NULL"}  # fmt: skip
    return KeyRecord(
        node="postgres-1",
        raw_key=postgres_outbox.key("run_r1", "outbox"),
        type=postgres_outbox.OUTBOX,
        ttl_ms=None,
        read_at_ms=read_at,
        fields={k.encode(): v.encode() for k, v in fields.items()},
    )


def test_an_outbox_table_is_a_queue_whose_backlog_and_age_show() -> None:
    state = State()
    state.apply_key(outbox_record(unsent=12, total=40, oldest=3000))
    (q,) = state.entities("queue")
    assert isinstance(q, Queue)
    assert (q.store, q.layout, q.name, q.length, q.sent, q.oldest_ms) == (
        "postgres", "outbox", "run_r1.outbox", 12, 28, 3000
    )  # fmt: skip
    row = cells(Queues, q)
    assert row["work"].plain == "12 unsent 28 sent"
    assert row["pending"].since_ms == 3000  # counts up on the screens
    # drained: no age
    state.apply_key(outbox_record(unsent=0, total=52, oldest=None))
    (q,) = state.entities("queue")
    assert isinstance(q, Queue) and q.length == 0 and cells(Queues, q)["pending"].plain == "none"
    state.drop_key("postgres-1", postgres_outbox.key("run_r1", "outbox"))
    assert state.entities("queue") == []


def test_an_outbox_shape_is_read_from_its_columns() -> None:
    assert postgres_outbox.shape(["id", "payload", "created_at", "sent_at"]) == (
        "sent_at",
        None,
        "created_at",
    )
    assert postgres_outbox.shape(["id", "published", "occurred_at"]) == (None, "published", "occurred_at")
    # Debezium's own outbox: rows are deleted once captured, and carry no time
    assert postgres_outbox.shape(["id", "aggregatetype", "aggregateid", "type", "payload"]) == (
        None,
        None,
        None,
    )


def op(index: int, actor: str, f: str, msg: str, tick: str, note: str = "", t: int = 0) -> Op:
    return Op(index=index, t_ms=t or index * 10, actor=actor, kind="info", f=f, note=note,
              data={"msg": msg, "tick": tick})  # fmt: skip


def test_a_message_is_followed_across_every_lane_in_time_order() -> None:
    ops = [
        Op(index=0, t_ms=1, actor="client", kind="invoke", f="order", data={"msg": "o1"}),  # not a step
        op(1, "A", "order", "o2", "committed"),
        op(2, "relay", "publish", "o1", "published", "as 1-0", t=21),
        # A narrates in batches of its own: its commit is stored after the relay's publish
        op(3, "A", "order", "o1", "committed", t=20),
        op(4, "relay", "publish", "o1", "published", "as 2-0 (again: crashed before marking)", t=40),
        op(5, "B-1", "apply", "o1", "applied", t=50),
        op(6, "B-2", "apply", "o1", "twice", t=60),
        Op(index=7, t_ms=70, actor="client", kind="ok", f="order", data={"msg": "o1"}),
        Op(index=8, t_ms=80, actor="B-1", kind="ok", f="poll"),  # no message: no journey
    ]
    followed, total = journeys(ops)
    found = {j.msg: j for j in followed}
    assert list(found) == ["o2", "o1"] and total == 2  # in the order they started
    o1 = found["o1"]
    assert o1.path == "A committed → relay published ×2 → B-1 applied → B-2 twice → client order ok"
    assert o1.bad and not found["o2"].bad
    assert [s.note for s in o1.steps][2] == "as 2-0 (again: crashed before marking)"
    # its ticks carry it: a click on one finds the rest
    ticks = [t for lane in lanes(ops) for t in lane.ticks]
    assert {t.msg for t in ticks} == {"o1", "o2"}


def test_journeys_are_bounded_keeping_the_eventful_ones() -> None:
    from collectors.journeys import JOURNEY_STEPS, JOURNEYS

    n = JOURNEYS + 50
    many = [op(i, "A", "order", f"m{i}", "committed") for i in range(n)]
    many.append(op(n, "B-2", "apply", "m3", "duplicate"))  # an early message something happened to
    followed, total = journeys(many)
    kept = [j.msg for j in followed]
    assert total == n and len(kept) == JOURNEYS
    assert kept[0] == "m3" and kept[-1] == f"m{n - 1}"  # kept, then the latest plain ones
    long = [op(i, "broker", "check", "m", "check") for i in range(JOURNEY_STEPS + 3)]
    ((j,), _) = journeys(long)
    assert len(j.steps) == JOURNEY_STEPS and "later steps not shown" in j.steps[-1].note


def test_a_journey_book_grows_with_the_history_and_forgets_the_oldest_plain_messages() -> None:
    from collectors.journeys import BOOK_MESSAGES, JourneyBook

    book = JourneyBook()
    book.add([op(0, "A", "order", "m0", "committed"), op(1, "B-1", "apply", "m0", "applied")])
    ((m0,), _) = book.journeys()
    book.add([op(2, "B-2", "apply", "m0", "twice")])  # a step more: built again
    ((again,), _) = book.journeys()
    assert again is not m0 and again.bad and again.path == "A committed → B-1 applied → B-2 twice"
    book.add([op(3 + i, "A", "order", f"p{i}", "committed") for i in range(BOOK_MESSAGES + 10)])
    kept, total = book.journeys()
    assert total == BOOK_MESSAGES + 11  # the forgotten still counted
    assert kept[0].msg == "m0"  # eventful: never forgotten


def test_a_consumers_dedup_mark_is_an_idempotency_mark_and_the_schedules_say_what_they_are() -> None:
    from collectors.families.keys import Keys
    from collectors.families.marks import Mark

    state = State()
    state.apply_key(
        KeyRecord(
            node="redis-1",
            raw_key=messaging.done_key(RUN, "o3").encode(),
            type="string",
            ttl_ms=60_000,
            read_at_ms=5000,
            value=b"B",
        )
    )
    (mark,) = state.entities("mark")
    assert isinstance(mark, Mark) and (mark.state, mark.owner) == ("COMPLETED", "B")
    state.apply_key(
        KeyRecord(
            node="redis-1",
            raw_key=messaging.half_schedule_key(RUN).encode(),
            type="zset",
            ttl_ms=None,
            read_at_ms=5000,
            size=2,
        )
    )
    (key,) = state.entities("key")
    assert Keys.row(key)[-1].plain.startswith("(coordscope broker's check schedule)")
