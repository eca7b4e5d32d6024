"""Rings: how an ordering run routes each order's events to a worker, and what each
worker and order has got to.

Joining: the router's hash (``coordscope:ordering:{<run>}:ring``, written by the
run each time its ring changes) and every order's applied state
(``...:order:<order>``, written by the worker that applies an event) are one
entity per run. Each worker's queue is a stream with a consumer group — an
entity of the queues family — which the ring *follows*: when a queue changes,
the ring is rebuilt with its depth and pending entries (re-read every
:data:`collectors.redis_streams.REFRESH_EVERY_S`, since ``XREADGROUP`` and
``XACK`` send no keyspace notification).

Both hashes are parsed once, when read, by the layout
(:func:`collectors.layouts.coordscope.parse_ring`, :func:`~collectors.layouts.coordscope.parse_log`):
a queue's change rebuilds the ring from facts already parsed. What the router writes
(JSON in hash fields; untrusted, parsed leniently):
``route``, ``vnodes``, ``version``, ``workers`` (in the ring), ``leaving`` (out
of the ring, still draining their queue), ``queues`` (worker -> stream key),
``points`` (``[[point, worker index], ...]``: the virtual nodes on the 2^32
circle), ``orders`` (``{order: [point, owner]}``), ``change`` (the last change:
what, when, the orders it moved and the share they are), ``split`` (the orders
whose events not applied yet sit in two queues or more, as routed, with those
workers and since when: kept current by the run while it goes).

An order's hash: ``state`` (the last event's name), ``seq``, and ``log`` — each
application ``<seq> <worker> <t_ms> <entry id>``, ``;``-separated, in the order
applied — which :func:`collectors.sequence.sequence_breaches` judges.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import (
    Cell,
    Column,
    Family,
    Line,
    Member,
    own,
    pieces,
    text,
)
from collectors.families.nodes import clock, keyspace
from collectors.layouts import coordscope
from collectors.layouts.facts import Applied, OrderFact, RingFact
from collectors.records import KeyRecord
from collectors.redis_streams import REFRESH_EVERY_S

ORDERS_SHOWN = 200
"""Orders listed on a ring (placed and with their sequences); the rest are counted."""


@dataclass(frozen=True)
class RingWorker:
    name: str
    share: float | None
    """Its arc of the circle (None: the route does not hash)."""
    points: int
    orders: int
    """Orders the ring sends it now."""
    queue: str
    depth: int | None = None
    """Entries in its queue not yet acknowledged: never delivered (the group's lag) plus
    pending (delivered, not acknowledged). None: the queue is not read (yet)."""
    pending: int | None = None
    consumers: tuple[tuple[str, int], ...] = ()
    """(consumer, its pending entries): a crashed incarnation keeps its own until claimed."""
    oldest_since_ms: int | None = None
    leaving: bool = False
    """Out of the ring, still draining its queue."""


@dataclass(frozen=True)
class RingOrder:
    order: str
    point: int | None
    owner: str
    """The worker the ring sends it to now ("" when any worker may take it)."""
    applied: tuple[Applied, ...] = ()
    state: str = ""
    breach: str = ""
    """"" | out-of-order | twice: the first breach of its sequence."""
    moved: str = ""
    """``before -> after`` when the last change of the ring moved it."""
    split: tuple[str, ...] = ()
    """The workers whose queues hold events of it not applied yet, when there are two or
    more (as the run routed them): two workers may apply its events at once."""
    split_since_ms: int | None = None


@dataclass(frozen=True)
class Ring:
    KIND: ClassVar[str] = "ring"
    id: str
    run: str
    route: str
    version: int = 0
    vnodes: int = 0
    workers: tuple[RingWorker, ...] = ()
    points: tuple[tuple[int, int], ...] = ()
    """(point on the 2^32 circle, index into ``workers``), sorted by point."""
    orders: tuple[RingOrder, ...] = ()
    more_orders: int = 0
    change: str = ""
    changed_ms: int | None = None
    moved: int = 0
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False

    @property
    def breached(self) -> int:
        return sum(1 for o in self.orders if o.breach)

    @property
    def split(self) -> int:
        return sum(1 for o in self.orders if o.split)


class Rings(Family):
    kind = "ring"
    plural = "rings"
    title = "Rings (ordering: who gets each order's events)"
    entity = Ring
    facts = (RingFact, OrderFact)
    recognisers = (own(coordscope.recognise_ordering),)
    sort = "run"
    empty = "no ordering runs"
    columns = (
        Column("run", "run", lambda r: text(r.run, "bold"), limit=20),
        Column("route", "route", lambda r: text(r.route), limit=16),
        Column("orders", "orders", lambda r: _orders(r), limit=30),
        Column("workers", "workers · share · depth · pending", lambda r: _workers(r), limit=90),
        Column("change", "last change", lambda r: text(r.change or None, title=r.change), limit=60),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{keyspace(self.view, node_id)}:{fact.run_id}"

    def build(self, entity_id: str, members: list[Member]) -> Ring | None:
        view = self.view
        ring: tuple[str, RingFact] | None = None
        orders: dict[str, OrderFact] = {}
        as_of = 0
        for node_id, key in sorted(members):
            if view.is_replica(node_id) and not view.down(view.group(node_id)):
                continue
            rec, fact = view.observation((node_id, key))
            if not isinstance(rec, KeyRecord):
                continue
            as_of = max(as_of, rec.read_at_ms)
            if isinstance(fact, RingFact) and ring is None:
                ring = (node_id, fact)
            elif isinstance(fact, OrderFact):
                orders.setdefault(fact.order, fact)
        if ring is None and not orders:
            return None
        node_id = ring[0] if ring else members[0][0]
        r = ring[1] if ring else RingFact(run_id=next(iter(orders.values())).run_id)
        ring_orders = []
        for order in sorted(set(r.placed) | set(orders), key=_order_rank):
            point, owner = r.placed.get(order, (None, ""))
            fact = orders.get(order)
            applied = fact.applied if fact else ()
            held, since = r.split.get(order, ((), None))
            ring_orders.append(
                RingOrder(
                    order=order,
                    point=point,
                    owner=owner,
                    applied=applied,
                    state=fact.state if fact else "",
                    breach=next((a.breach for a in applied if a.breach), ""),
                    moved=r.moved.get(order, ""),
                    split=held,
                    split_since_ms=since,
                )
            )
        owned = Counter(o.owner for o in ring_orders)
        points = Counter(i for _, i in r.points)
        workers = []
        for i, name in enumerate([*r.workers, *r.leaving]):
            queue = r.queues.get(name, "")
            if queue:
                view.follow((self.kind, entity_id), (node_id, queue))
            share = r.arcs[i] if i < len(r.arcs) else None
            workers.append(
                self._worker(node_id, name, queue, share, points[i], owned[name], name in r.leaving)
            )
        return Ring(
            id=entity_id,
            run=r.run_id,
            route=r.route,
            version=r.version,
            vnodes=r.vnodes,
            workers=tuple(workers),
            points=r.points,
            orders=tuple(ring_orders[:ORDERS_SHOWN]),
            more_orders=max(0, len(ring_orders) - ORDERS_SHOWN),
            change=r.change,
            changed_ms=r.changed_ms,
            moved=len(r.moved),
            node=view.group(node_id),
            as_of_ms=as_of,
            stale=view.stale(n for n, _ in members),
        )

    def _worker(
        self,
        node_id: str,
        name: str,
        queue: str,
        share: float | None,
        points: int,
        orders: int,
        leaving: bool,
    ) -> RingWorker:
        try:
            rec = self.view.observation((node_id, queue))[0] if queue else None
        except KeyError:  # not read yet (or gone): its depth is unknown, not zero
            rec = None
        if not isinstance(rec, KeyRecord) or rec.type != "stream":
            return RingWorker(name, share, points, orders, queue, leaving=leaving)
        group = next((g for g in rec.groups if g.name == coordscope.WORKER_GROUP), None)
        if group is None:
            return RingWorker(name, share, points, orders, queue, depth=rec.size, leaving=leaving)
        return RingWorker(
            name,
            share,
            points,
            orders,
            queue,
            depth=(group.lag or 0) + group.pending,
            pending=group.pending,
            consumers=tuple((c.name, c.pending) for c in group.consumers),
            oldest_since_ms=group.oldest_since_ms,
            leaving=leaving,
        )

    def narrate(self, old: Ring | None, new: Ring | None, cause: str) -> None:
        log = self.view.log
        if new is None:
            if old is not None:
                log("info", old.node, f"ring of {old.run} {cause or 'removed'}")
            return
        if old is None or old.version != new.version:
            log("info", new.node, f"ring of {new.run} v{new.version}: {new.change or 'built'}")
        before = {o.order: o.breach for o in old.orders} if old else {}
        for o in new.orders:
            if o.breach and not before.get(o.order):
                seqs = " ".join(str(a.seq) for a in o.applied)
                log("warn", new.node, f"{new.run}: {o.order} applied {o.breach} ({seqs})")

    @classmethod
    def detail(cls, entity: Any) -> tuple[Line, ...]:
        r: Ring = entity
        lines: list[Line] = [
            (text("ring", "dim"), text(f"{r.run} · route {r.route} · v{r.version} on {r.node}")),
        ]
        if r.vnodes:
            lines.append(
                (
                    text("virtual nodes", "dim"),
                    text(f"{r.vnodes} per worker (Dubbo: 4 points per MD5 digest)"),
                )
            )
        if r.change:
            lines.append((text("last change", "dim"), text(f"{clock(r.changed_ms)} {r.change}")))
        for w in r.workers:
            lines.append((text(f"worker {w.name}", "bold"), worker_cell(w)))
            for consumer, pending in w.consumers:
                lines.append((text(f"  consumer {consumer}", "dim"), text(f"pending {pending}")))
        lines.append(
            (
                text("refresh", "dim"),
                text(f"queues' groups re-read every {REFRESH_EVERY_S:g}s (XREADGROUP/XACK send no event)"),
            )
        )
        for o in r.orders:
            lines.append((text(o.order, "bad" if o.breach else "dim"), order_cell(o)))
        if r.more_orders:
            lines.append((text("…", "dim"), text(f"{r.more_orders} more order(s)")))
        return tuple(lines)


def _order_rank(order: str) -> tuple[str, int]:
    """order-2 before order-10."""
    stem, _, number = order.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (order, 0)


def share_text(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f}%"


def worker_cell(w: RingWorker) -> Cell:
    """A worker in one line: share, orders, depth, pending (and leaving)."""
    parts: list[tuple[str, str] | str] = []
    if w.share is not None:
        parts.append(f"arc {share_text(w.share)}")
    parts.append(f"{w.orders} orders")
    parts.append(("depth ?" if w.depth is None else f"depth {w.depth}", "warn" if w.depth else "dim"))
    if w.pending is not None:
        parts.append((f"pending {w.pending}", "warn" if w.pending else "dim"))
    if w.leaving:
        parts.append(("leaving", "warn"))
    return pieces(*parts, title=w.queue)


def order_cell(o: RingOrder) -> Cell:
    """An order's applied sequence, each application that broke it in red."""
    parts: list[tuple[str, str] | str] = [(str(a.seq), "bad" if a.breach else "good") for a in o.applied]
    if not o.applied:
        parts.append(("nothing applied", "dim"))
    if o.breach:
        parts.append((o.breach, "bad"))
    parts.append((f"→ {o.owner}" if o.owner else "any worker", "dim"))
    if o.moved:
        parts.append((f"moved {o.moved}", "warn"))
    if o.split:
        parts.append((f"in {len(o.split)} queues: {', '.join(o.split)}", "warn"))
    by = " ".join(f"{a.seq}:{a.worker}" for a in o.applied)
    return pieces(*parts, title=by)


def _workers(r: Ring) -> Cell:
    """One piece per worker, so the page wraps between workers, never inside one."""
    parts: list[tuple[str, str] | str] = []
    for w in r.workers:
        bits = [w.name, *([share_text(w.share)] if w.share is not None else [])]
        bits.append("?" if w.depth is None else str(w.depth))
        bits.append("?" if w.pending is None else str(w.pending))
        if w.leaving:
            bits.append("leaving")
        parts.append((" · ".join(bits), "warn" if w.leaving or w.pending else ""))
    return pieces(*parts)


def _orders(r: Ring) -> Cell:
    total = len(r.orders) + r.more_orders
    idle = sum(1 for o in r.orders if not o.applied)
    parts: list[tuple[str, str] | str] = [f"{total} orders"]
    if r.breached:  # first: the TUI cuts the cell, and this is what it is for
        parts.append((f"{r.breached} breached", "bad"))
    if r.split:
        parts.append((f"{r.split} in two queues", "warn"))
    if idle:
        parts.append((f"{idle} not started", "dim"))
    return pieces(*parts)
