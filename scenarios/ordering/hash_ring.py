"""The consistent-hash ring as Apache Dubbo's ``ConsistentHashLoadBalance`` builds it.

The ``consistent-hash`` variant of the ``ordering`` scenario routes every event of
one order to one worker's queue, so that one consumer applies them in turn. What
matters is *which* worker, and how many orders change worker when the ring
changes: this module is that decision alone, pure and frozen, so the scenario,
the checker and the ring view all agree on it.

What Dubbo does (``dubbo-cluster/.../loadbalance/ConsistentHashLoadBalance.java``,
its ``ConsistentHashSelector``, read at apache/dubbo 0b67066 (the 2.7 line); later
releases quoted elsewhere, 3.3.0 included, build the ring the same way):

- ``replicaNumber`` is the method parameter ``hash.nodes``, 160 by default.
- For each invoker, in list order, and each ``i`` in ``0 .. replicaNumber / 4 - 1``
  (integer division), it takes ``digest = md5(address + i)`` over the UTF-8 bytes
  (``address`` is the invoker's ``host:port``; ``i`` is appended as decimal text),
  and for ``h`` in ``0..3`` puts ``hash(digest, h)`` into a ``TreeMap<Long, Invoker>``.
- ``hash(digest, h)`` composes bytes ``4h .. 4h+3`` with byte ``4h`` lowest and
  ``4h+3`` highest, masked with ``0xFFFFFFFFL``: the four bytes read as an unsigned
  little-endian 32-bit number, a point on a circle of 2^32.
- A key (the invocation's ``hash.arguments``, the first argument by default, as a
  string) lands at ``hash(md5(key), 0)`` and goes to the first virtual node at or
  after that point — ``tailMap(point, true).firstEntry()`` — or, past the last
  one, to the first (the circle wraps).

Consequences we keep on purpose, because the scenario should show Dubbo's ring and
not a tidier one:

- A ``hash.nodes`` that is not a multiple of 4 is rounded down (10 gives 8 points).
- Two virtual nodes on the same point: ``TreeMap.put`` keeps the later one, so the
  worker listed later owns it and the earlier one has a point fewer. Our build
  applies the points in the same order with the same rule.
- Shares are uneven: 160 pseudo-random points per worker leave a worker's arc up to
  about a fifth off 1/n (17% at worst over 3..8 workers in the unit tests), so
  adding a fourth worker to three moves 23–26% of the keys rather than exactly 25%.

Not modelled: Dubbo rebuilds the selector whenever the invoker list's identity
changes (issues #5424, #5429), which is about *when* a ring is built; and 3.x's
bounded-load experiment (#10111, #11947), which sends a key past an overloaded
node. Neither changes the ring itself.

Errors: :meth:`HashRing.build` refuses (``ValueError``) what Dubbo would fail on
later or silently merge — no workers, a worker named twice, fewer than 4 vnodes.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

RING_SIZE = 1 << 32
"""The circle: points are unsigned 32-bit numbers."""

DEFAULT_VNODES = 160
"""Dubbo's ``hash.nodes`` default: virtual nodes per worker."""

POINTS_PER_DIGEST = 4
"""An MD5 digest is 16 bytes: four 32-bit points."""


def digest_points(text: str) -> tuple[int, int, int, int]:
    """The four points Dubbo draws from ``md5(text)``: bytes ``4h..4h+3``, little-endian."""
    digest = hashlib.md5(text.encode("utf-8"), usedforsecurity=False).digest()
    a, b, c, d = (int.from_bytes(digest[4 * h : 4 * h + 4], "little") for h in range(POINTS_PER_DIGEST))
    return a, b, c, d


def key_point(key: str) -> int:
    """Where a key lands on the circle: the first of its digest's points (Dubbo's ``hash(digest, 0)``)."""
    return digest_points(key)[0]


class VirtualNode(NamedTuple):
    """One point on the ring and the worker it stands for."""

    point: int
    worker: str

    @property
    def angle(self) -> float:
        """Degrees clockwise from the top of a drawn ring (0 at point 0)."""
        return self.point * 360.0 / RING_SIZE


class Move(NamedTuple):
    """A key whose owner differs between two rings."""

    key: str
    before: str
    after: str


@dataclass(frozen=True)
class HashRing:
    """The workers, their virtual nodes sorted by point, and the lookups on them.

    Build it with :meth:`build`; a ring never changes — adding a worker is a new ring,
    and :meth:`moved` compares the two.
    """

    workers: tuple[str, ...]
    """The workers in the order given (the order that settles a collision)."""
    vnodes: int
    """The ``hash.nodes`` asked for (each worker has ``vnodes // 4 * 4`` points, less collisions)."""
    ring: tuple[VirtualNode, ...]
    """The virtual nodes, sorted by point."""

    @classmethod
    def build(cls, workers: Iterable[str], vnodes: int = DEFAULT_VNODES) -> HashRing:
        """Place ``vnodes`` virtual nodes per worker as Dubbo does; ``workers`` are its addresses."""
        names = tuple(workers)
        if not names:
            raise ValueError("a ring needs at least one worker")
        if len(set(names)) != len(names):
            raise ValueError(f"workers must be distinct: {names}")
        if vnodes < POINTS_PER_DIGEST:
            # Dubbo would build an empty TreeMap and fail on the first call.
            raise ValueError(f"vnodes must be at least {POINTS_PER_DIGEST}, not {vnodes}")
        owner: dict[int, str] = {}
        for worker in names:
            for i in range(vnodes // POINTS_PER_DIGEST):
                for point in digest_points(f"{worker}{i}"):
                    owner[point] = worker  # a later worker takes a shared point, as TreeMap.put does
        ring = tuple(VirtualNode(point, owner[point]) for point in sorted(owner))
        return cls(workers=names, vnodes=vnodes, ring=ring)

    def node_for(self, key: str) -> str:
        """The worker for ``key``: the first virtual node at or after its point, wrapping."""
        return self.vnode_for(key).worker

    def vnode_for(self, key: str) -> VirtualNode:
        """The virtual node ``key`` lands on (for drawing the key's arrow to it)."""
        index = bisect_left(self.ring, key_point(key), key=lambda node: node.point)
        return self.ring[index % len(self.ring)]

    def points(self) -> tuple[VirtualNode, ...]:
        """The (point, worker) pairs around the circle, in order; ``.angle`` places each one."""
        return self.ring

    def share(self) -> dict[str, float]:
        """Each worker's fraction of the circle; they sum to 1.

        A virtual node owns the points after its predecessor up to and including
        itself; the first one also owns the wrap past the last one.
        """
        arcs = dict.fromkeys(self.workers, 0)
        previous = self.ring[-1].point - RING_SIZE
        for node in self.ring:
            arcs[node.worker] += node.point - previous
            previous = node.point
        return {worker: arc / RING_SIZE for worker, arc in arcs.items()}

    def moved(self, other: HashRing, keys: Iterable[str]) -> tuple[Move, ...]:
        """The keys whose worker differs on ``other`` (this ring is before, ``other`` after)."""
        moves = []
        for key in keys:
            before, after = self.node_for(key), other.node_for(key)
            if before != after:
                moves.append(Move(key, before, after))
        return tuple(moves)
