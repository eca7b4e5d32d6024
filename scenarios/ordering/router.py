"""Where each event goes: the producers' router, and the ring it writes to the store.

A Dubbo consumer balances by itself: it holds the providers' hash ring and sends
each call to the provider the ring names. Our producers do the same with the
workers' queues, and the router writes the ring it routes by into
``coordscope:ordering:{<run>}:ring`` (whenever it changes), so both screens
draw the ring the producers actually use.

Routes:

- ``round-robin``: the workers in turn, whatever the order;
- ``consistent-hash``: the order's owner on the ring
  (:mod:`scenarios.ordering.hash_ring`, Dubbo's ``ConsistentHashLoadBalance``);
- ``zk-seq``: any worker, in turn (the workers' sequence gate keeps the order).

Changing the ring (a worker added or removed) moves some orders to another
worker. Their events already queued at the old owner are still to be applied
there while new ones go to the new owner: for a while the order sits in two
queues, and two workers may apply its events at once. ``handoff=immediate``
switches at once, as Dubbo does; ``handoff=drain`` keeps sending a moved order
to its old owner until everything sent there is applied (the order's applied
seq, read from the store, has reached the last seq sent there), then switches —
no window, at the price of a slower hand-off for those orders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.state import now_ms
from scenarios.ordering.hash_ring import HashRing, Move, key_point

SAMPLE_KEYS = 10_000
"""Keys the share of moved keys is measured over, beside the run's own orders."""


@dataclass
class RingChange:
    what: str
    at_ms: int
    moves: tuple[Move, ...]
    orders: int
    sample_share: float | None
    theory: float | None

    @property
    def share(self) -> float:
        return len(self.moves) / self.orders if self.orders else 0.0

    def summary(self) -> str:
        if self.sample_share is None:
            return self.what
        return (
            f"{self.what}: {len(self.moves)} of {self.orders} orders moved ({self.share:.0%}); "
            f"over {SAMPLE_KEYS:,} keys {self.sample_share:.1%} (theory {self.theory:.1%})"
        )


@dataclass
class Router:
    run_id: str
    route: str
    workers: list[str]
    vnodes: int
    orders: list[str]
    handoff: str = "immediate"
    version: int = 0
    leaving: list[str] = field(default_factory=list)
    ring: HashRing | None = None
    change: RingChange | None = None
    queued: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    """order -> worker -> every seq sent to that worker (until a hand-off drained it)."""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What the store says is split now: order -> {"workers": [...], "since_ms": wall ms}."""
    _turn: Any = field(default_factory=count)

    def __post_init__(self) -> None:
        if self.route == "consistent-hash":
            self.ring = HashRing.build(self.workers, self.vnodes)

    @property
    def key(self) -> str:
        return coordscope.ring_key(self.run_id)

    def owner(self, order: str) -> str:
        """Where the ring sends ``order`` now ("" when any worker may take it)."""
        return self.ring.node_for(order) if self.ring is not None else ""

    async def route_of(self, order: str, seq: int, store: Redis) -> str:
        """The worker ``order``'s event ``seq`` goes to (and remember it went there)."""
        if self.ring is None:
            worker = self.workers[int(next(self._turn)) % len(self.workers)]
        else:
            worker = self.ring.node_for(order)
            if self.handoff == "drain":
                worker = await self._drained(order, worker, store)
        self.queued.setdefault(order, {}).setdefault(worker, set()).add(seq)
        return worker

    def split(self, applied: dict[str, set[int]]) -> dict[str, list[str]]:
        """The orders whose events not applied yet sit in two queues or more (as routed), and
        those workers: the window in which two workers may apply one order's events at once."""
        out = {}
        for order, by in self.queued.items():
            done = applied.get(order, set())
            holding = sorted(w for w, seqs in by.items() if seqs - done)
            if len(holding) > 1:
                out[order] = holding
        return out

    async def _drained(self, order: str, owner: str, store: Redis) -> str:
        """The old owner while it still has events of ``order`` to apply, else ``owner``."""
        queued = self.queued.get(order, {})
        others = {w: max(seqs) for w, seqs in queued.items() if w != owner and seqs}
        if not others:
            return owner
        raw = await store.hget(coordscope.order_key(self.run_id, order), "seq")
        applied = int(raw) if raw is not None and raw.isdigit() else 0
        behind = [w for w, s in others.items() if s > applied]
        if behind:
            return str(max(behind, key=lambda w: others[w]))
        for w in others:  # handed off: no need to ask the store again
            queued.pop(w)
        return owner

    def reshape(self, workers: list[str], what: str, t_ms: int) -> RingChange:
        """A new ring over ``workers``: which orders it moves, and what share of keys."""
        before = self.ring
        gone = [w for w in self.workers if w not in workers]
        self.leaving = [*self.leaving, *gone]
        self.workers = list(workers)
        self.version += 1
        if self.route != "consistent-hash" or before is None:
            self.change = RingChange(what, t_ms, (), len(self.orders), None, None)
            return self.change
        self.ring = HashRing.build(workers, self.vnodes)
        sample = before.moved(self.ring, (f"sample-{i}" for i in range(SAMPLE_KEYS)))
        added = len(workers) > len(before.workers)
        n = max(len(workers), len(before.workers))
        self.change = RingChange(
            what,
            t_ms,
            before.moved(self.ring, self.orders),
            len(self.orders),
            len(sample) / SAMPLE_KEYS,
            (1 / n) if added else (1 / len(before.workers)),
        )
        return self.change

    def fields(self) -> dict[str, str]:
        """The ring as the store holds it (see :mod:`collectors.families.rings`)."""
        everyone = [*self.workers, *self.leaving]
        index = {w: i for i, w in enumerate(self.workers)}
        points = [[v.point, index[v.worker]] for v in self.ring.points()] if self.ring else []
        ring = self.ring
        placed = {o: [key_point(o), ring.node_for(o)] if ring else [-1, ""] for o in self.orders}
        change: dict[str, Any] = {}
        if self.change is not None:
            c = self.change
            change = {
                "what": c.summary(),
                "at_ms": now_ms(),
                "t_ms": c.at_ms,
                "moved": [[m.key, m.before, m.after] for m in c.moves],
                "share": c.share,
                "sample_share": c.sample_share,
                "theory": c.theory,
            }
        return {
            "route": self.route,
            "handoff": self.handoff,
            "vnodes": str(self.vnodes if self.ring else 0),
            "version": str(self.version),
            "workers": json.dumps(self.workers),
            "leaving": json.dumps(self.leaving),
            "queues": json.dumps({w: coordscope.worker_queue_key(self.run_id, w) for w in everyone}),
            "points": json.dumps(points, separators=(",", ":")),
            "orders": json.dumps(placed, separators=(",", ":")),
            "change": json.dumps(change),
            "split": json.dumps(self.splits),
        }

    async def publish_split(self, store: Redis, applied: dict[str, set[int]]) -> bool:
        """Write which orders sit in two queues now, if that changed (True when it did)."""
        now = {o: {"workers": ws, "since_ms": self.splits.get(o, {}).get("since_ms") or now_ms()}
               for o, ws in self.split(applied).items()}  # fmt: skip
        if {o: v["workers"] for o, v in now.items()} == {o: v["workers"] for o, v in self.splits.items()}:
            return False
        self.splits = now
        await store.hset(self.key, "split", json.dumps(now))
        return True

    async def publish(self, store: Redis) -> None:
        await store.hset(self.key, mapping=self.fields())  # type: ignore[arg-type]

    def drained(self, worker: str) -> None:
        """A leaving worker has emptied its queue and stopped: off the ring's list."""
        if worker in self.leaving:
            self.leaving.remove(worker)
