"""The rings family on the state: the router's ring, the orders as applied, and the
workers' queues it follows — built from key records as the collector reads them."""

from __future__ import annotations

import pytest

from collectors.families.nodes import Node
from collectors.families.rings import Ring, RingOrder, Rings, RingWorker, order_cell
from collectors.layouts import coordscope
from collectors.layouts.coordscope import judged, parse_log
from collectors.layouts.facts import Applied
from collectors.records import KeyRecord, StreamConsumer, StreamGroup
from collectors.sequence import missing, sequence_breaches
from collectors.state import State
from scenarios.ordering.hash_ring import HashRing
from scenarios.ordering.router import Router

RUN = "ordering-1"
ORDERS = [f"order-{i}" for i in range(1, 13)]


def hash_rec(key: str, fields: dict[str, str]) -> KeyRecord:
    return KeyRecord(
        node="redis-1",
        raw_key=key.encode(),
        type="hash",
        ttl_ms=None,
        read_at_ms=1000,
        fields={k.encode(): v.encode() for k, v in fields.items()},
        size=len(fields),
    )


def stream_rec(worker: str, lag: int, pending: int, read_at: int = 1000) -> KeyRecord:
    group = StreamGroup(
        name=coordscope.WORKER_GROUP,
        pending=pending,
        last_delivered="0-0",
        consumers=(StreamConsumer(f"{worker}.0", pending, 900),),
        lag=lag,
    )
    return KeyRecord(
        node="redis-1",
        raw_key=coordscope.worker_queue_key(RUN, worker).encode(),
        type="stream",
        ttl_ms=None,
        read_at_ms=read_at,
        groups=(group,),
        size=lag + pending,
    )


def order_rec(order: str, log: str) -> KeyRecord:
    return hash_rec(coordscope.order_key(RUN, order), {"state": "paid", "seq": "2", "log": log})


def state_with(router: Router) -> State:
    state = State(clock=lambda: 5000)
    state.set_node(Node(id="redis-1", store="redis", address="redis-1:1", role="master", status="up"))
    state.apply_key(hash_rec(router.key, router.fields()))
    state.drain()
    return state


def the_ring(state: State) -> Ring:
    rings = state.entities("ring")
    assert len(rings) == 1
    ring = rings[0]
    assert isinstance(ring, Ring)
    return ring


def test_the_ring_as_the_router_wrote_it() -> None:
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2", "worker-3"], 160, ORDERS)
    ring = the_ring(state_with(router))
    expected = HashRing.build(["worker-1", "worker-2", "worker-3"], 160)
    assert ring.run == RUN and ring.route == "consistent-hash" and ring.vnodes == 160
    assert len(ring.points) == len(expected.points()) == 480
    assert [w.name for w in ring.workers] == ["worker-1", "worker-2", "worker-3"]
    for w in ring.workers:
        assert w.share == pytest.approx(expected.share()[w.name])
        assert w.points == sum(1 for v in expected.points() if v.worker == w.name)
        assert w.depth is None  # no queue read yet: unknown, not zero
    assert {o.order: o.owner for o in ring.orders} == {o: expected.node_for(o) for o in ORDERS}
    assert sum(w.orders for w in ring.workers) == len(ORDERS)
    assert [o.order for o in ring.orders][:3] == ["order-1", "order-2", "order-3"]  # 2 before 10


def test_a_queue_change_rebuilds_the_ring_that_follows_it() -> None:
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2"], 160, ORDERS)
    state = state_with(router)
    state.apply_key(stream_rec("worker-1", lag=5, pending=2))
    assert the_ring(state).workers[0].depth == 7 and the_ring(state).workers[0].pending == 2
    state.drain()
    state.apply_key(stream_rec("worker-1", lag=0, pending=0, read_at=2000))  # the 1 s group refresh
    events = state.drain()
    assert any(getattr(e, "entity", None) and e.entity.KIND == "ring" for e in events)
    assert the_ring(state).workers[0].depth == 0
    assert the_ring(state).workers[0].consumers == (("worker-1.0", 0),)


def test_orders_as_applied_and_their_breaches() -> None:
    router = Router(RUN, "round-robin", ["worker-1", "worker-2"], 160, ORDERS[:3])
    state = state_with(router)
    state.apply_key(order_rec("order-1", "1 worker-1.0 10 1-0;2 worker-2.0 20 1-1"))
    state.apply_key(order_rec("order-2", "2 worker-2.0 10 1-2;1 worker-1.0 30 1-3"))
    state.apply_key(order_rec("order-3", "1 worker-1.0 10 1-4;1 worker-1.1 40 1-4;garbage;;x y"))
    ring = the_ring(state)
    by = {o.order: o for o in ring.orders}
    assert by["order-1"].breach == "" and [a.seq for a in by["order-1"].applied] == [1, 2]
    assert by["order-2"].breach == "out-of-order"
    assert by["order-3"].breach == "twice" and len(by["order-3"].applied) == 2
    assert ring.breached == 2
    assert ring.points == () and all(w.share is None for w in ring.workers)  # round-robin: no ring
    assert {o.owner for o in ring.orders} == {""}  # any worker
    logged = [line.text for line in state.snapshot().log]
    assert any("order-2 applied out-of-order" in t for t in logged)


def test_a_change_of_the_ring_moves_orders_and_says_so() -> None:
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2", "worker-3"], 160, ORDERS)
    state = state_with(router)
    change = router.reshape(["worker-1", "worker-2", "worker-3", "worker-4"], "+worker-4", 1234)
    state.apply_key(hash_rec(router.key, router.fields()))
    ring = the_ring(state)
    assert ring.version == 1 and len(ring.points) == len(router.ring.points())  # type: ignore[union-attr]
    assert ring.moved == len(change.moves) and "+worker-4" in ring.change
    moved = {o.order for o in ring.orders if o.moved}
    assert moved == {m.key for m in change.moves}
    assert all(o.moved.endswith("-> worker-4") for o in ring.orders if o.moved)
    assert change.sample_share is not None and abs(change.sample_share - 0.25) < 0.06


def test_a_leaving_worker_is_shown_until_it_drained() -> None:
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2", "worker-3"], 160, ORDERS)
    state = state_with(router)
    router.reshape(["worker-1", "worker-2"], "-worker-3", 1)
    state.apply_key(hash_rec(router.key, router.fields()))
    names = [(w.name, w.leaving, w.share is None) for w in the_ring(state).workers]
    assert names == [("worker-1", False, False), ("worker-2", False, False), ("worker-3", True, True)]
    router.drained("worker-3")
    state.apply_key(hash_rec(router.key, router.fields()))
    assert [w.name for w in the_ring(state).workers] == ["worker-1", "worker-2"]


def test_garbage_in_the_ring_hash_never_breaks_the_state() -> None:
    state = State(clock=lambda: 5000)
    state.set_node(Node(id="redis-1", store="redis", address="redis-1:1", role="master", status="up"))
    key = coordscope.ring_key(RUN)
    state.apply_key(hash_rec(key, {"workers": "[not json", "points": '[[1, 9], "x", [2]]', "orders": "{}"}))
    ring = the_ring(state)
    assert ring.workers == () and ring.points == ()
    state.apply_key(hash_rec(key, {"workers": '["a"]', "points": "[[5, 0], [-3, 7]]", "change": "[]"}))
    assert the_ring(state).points == ((5, 0),) and the_ring(state).change == ""
    assert state.bad_data == 0


def test_parse_log_skips_what_it_cannot_read() -> None:
    assert [a.seq for a in parse_log("1 w 5 1-0;x;3 w;2 w 9 1-1")] == [1, 2]


@pytest.mark.parametrize(
    ("applied", "kinds"),
    [
        ([1, 2, 3, 4], []),
        ([2, 1, 3, 4], ["out-of-order"]),
        ([1, 3, 2, 4], ["out-of-order"]),
        ([1, 2, 2, 3], ["twice"]),
        ([4, 3, 2, 1], ["out-of-order", "out-of-order", "out-of-order"]),
        ([1, 1, 1], ["twice", "twice"]),
    ],
)
def test_sequence_breaches(applied: list[int], kinds: list[str]) -> None:
    assert [b.kind for b in sequence_breaches(applied)] == kinds


def test_missing_events() -> None:
    assert missing([1, 3], 4) == [2, 4] and missing([], 0) == []


def test_each_application_says_whether_it_broke_the_sequence() -> None:
    applied = judged(parse_log("1 w-1 10 a;2 w-1 11 b;4 w-2 12 c;3 w-1 13 d;3 w-1 14 e"))
    assert [(a.seq, a.breach) for a in applied] == [
        (1, ""),
        (2, ""),
        (4, "out-of-order"),  # applied while 3 was not: this one broke it, not 3
        (3, ""),
        (3, "twice"),
    ]


def test_an_orders_cell_marks_the_very_application_that_broke_it() -> None:
    order = RingOrder(
        "order-3",
        7,
        "worker-2",
        applied=judged(tuple(Applied(s, "worker-1", 0) for s in (1, 2, 4, 3))),
        breach="out-of-order",
        moved="worker-1 -> worker-2",
    )
    tones = [(p.text, p.tone) for p in order_cell(order).pieces]
    assert tones[:5] == [("1", "good"), ("2", "good"), ("4", "bad"), ("3", "good"), ("out-of-order", "bad")]
    assert ("moved worker-1 -> worker-2", "warn") in tones


def test_the_dashboard_row_keeps_each_worker_in_one_piece_and_counts_breaches() -> None:
    ring = Ring(
        id="r",
        run="run-1",
        route="consistent-hash",
        workers=(
            RingWorker("worker-1", 0.5, 160, 1, "q1", depth=3, pending=1),
            RingWorker("worker-2", None, 0, 0, "q2", depth=0, pending=0, leaving=True),
        ),
        orders=(
            RingOrder("order-1", 1, "worker-1", applied=judged((Applied(2, "w", 0),)), breach="out-of-order"),
            RingOrder("order-2", 2, "worker-1"),
        ),
    )
    cells = dict(zip((c.key for c in Rings.columns), Rings.row(ring), strict=True))
    assert [p.text for p in cells["workers"].pieces] == [
        "worker-1 · 50.0% · 3 · 1",
        "worker-2 · 0 · 0 · leaving",
    ]
    assert [(p.text, p.tone) for p in cells["orders"].pieces] == [
        ("2 orders", ""),
        ("1 breached", "bad"),
        ("1 not started", "dim"),
    ]


def test_long_names_are_cut_in_the_middle_so_their_ends_still_differ() -> None:
    from collectors.families.base import middle

    a = middle(coordscope.worker_queue_key(RUN, "worker-1"), 28)
    b = middle(coordscope.worker_queue_key(RUN, "worker-2"), 28)
    assert len(a) == 28 and a != b and a.endswith("worker-1") and "…" in a
    assert middle("jobs", 28) == "jobs"


async def test_orders_in_two_queues_as_routed_and_as_the_screens_read_them() -> None:
    class Store:
        def __init__(self) -> None:
            self.fields: dict[str, str] = {}

        async def hset(self, key: str, name: str, value: str) -> None:
            self.fields[name] = value

    router = Router(RUN, "round-robin", ["worker-1", "worker-2", "worker-3"], 160, ORDERS[:2])
    store = Store()
    for order, seq in (("order-1", 1), ("order-1", 2), ("order-2", 1)):
        await router.route_of(order, seq, store)  # type: ignore[arg-type]
    assert router.split({}) == {"order-1": ["worker-1", "worker-2"]}  # order-2: one queue
    assert router.split({"order-1": {1}}) == {}  # what worker-1 held is applied
    assert await router.publish_split(store, {})  # type: ignore[arg-type]
    assert not await router.publish_split(store, {})  # type: ignore[arg-type]  # unchanged: not written
    state = state_with(router)
    state.apply_key(hash_rec(router.key, {**router.fields(), "split": store.fields["split"]}))
    ring = the_ring(state)
    by = {o.order: o for o in ring.orders}
    assert by["order-1"].split == ("worker-1", "worker-2") and by["order-2"].split == ()
    assert ring.split == 1 and "in 2 queues: worker-1, worker-2" in order_cell(by["order-1"]).plain
    assert await router.publish_split(store, {"order-1": {1, 2}})  # type: ignore[arg-type]
    assert store.fields["split"] == "{}"
