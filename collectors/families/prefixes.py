"""Key prefixes: what a node holds beyond its budgets, summarised.

A production Redis holds millions of keys that are not coordination state
(caches, counters, queues of other systems), and may hold a million live
sessions. Past a node's budget of keys listed one by one — for the keys no
family recognised, and for each family's — the rest are counted by prefix
(:func:`collectors.census.prefix_of`): how many, of which types, bytes held in
strings, TTL spread and a few example names. Counts come from the last
complete scan of the node; writes and removals seen since are counted beside
them, so a reader knows how fresh the count is. The census
(:mod:`collectors.census`) sets these entities directly, like nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import Cell, Column, Family, Member, Piece, pieces, text
from collectors.families.nodes import clock
from collectors.records import Store

TTL_BUCKETS = ("none", "<1m", "<1h", "<1d", "≥1d")


@dataclass(frozen=True)
class KeyPrefix:
    KIND: ClassVar[str] = "prefix"
    id: str
    node: str
    prefix: str
    family: str = "key"
    """Whose keys: ``key`` (nobody recognised them), or a family past its budget (``session``)."""
    keys: int = 0
    """Keys under this prefix in the last complete scan (the running one, before any ended)."""
    types: dict[str, int] | None = None
    ttls: dict[str, int] | None = None
    """How many keys in each of :data:`TTL_BUCKETS`."""
    bytes: int = 0
    """Bytes held in its string values (``STRLEN``; other types count elements, not bytes)."""
    examples: tuple[str, ...] = ()
    as_of_ms: int = 0
    """When the scan that counted them ended (0: still counting)."""
    writes: int = 0
    """Writes to keys under this prefix seen since that scan."""
    removals: int = 0
    """Deletions, expiries and evictions seen since that scan."""
    store: Store = "redis"


def size(n: int) -> str:
    for unit, step in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


def _count(p: KeyPrefix) -> Cell:
    if not p.as_of_ms:
        return pieces((f"{p.keys:,}", "bold"), ("counting…", "warn"))
    when = f"counted by the scan ended {clock(p.as_of_ms)}"
    return Cell(pieces=(Piece(f"{p.keys:,}", "bold"),), title=when)


def _since(p: KeyPrefix) -> Cell:
    if not (p.writes or p.removals):
        return text(None)
    title = "writes / removals since the count"
    return pieces(f"+{p.writes:,}", ("/", "dim"), f"−{p.removals:,}", title=title)


def _spread(values: dict[str, int] | None, order: tuple[str, ...] = ()) -> str:
    if not values:
        return ""
    keys = [k for k in order if k in values] + sorted(k for k in values if k not in order)
    return " ".join(f"{k} {values[k]:,}" for k in keys)


class Prefixes(Family):
    kind = "prefix"
    plural = "prefixes"
    title = "Key prefixes (summarised)"
    entity = KeyPrefix
    panel = "side"
    sort = "prefix"
    empty = "nothing summarised: every key is listed"
    columns = (
        Column("prefix", "prefix", lambda p: text(p.prefix, title=p.prefix), limit=24),
        Column("node", "node", lambda p: text(p.node)),
        Column("family", "of", lambda p: text("unrecognised" if p.family == "key" else p.family, "dim")),
        Column("keys", "keys", _count),
        Column("since", "since", _since),
        Column("types", "types", lambda p: text(_spread(p.types), "dim"), limit=24),
        Column("ttl", "TTL", lambda p: text(_spread(p.ttls, TTL_BUCKETS), "dim"), limit=28),
        Column("bytes", "strings", lambda p: text(size(p.bytes) if p.bytes else None)),
        Column("examples", "e.g.", lambda p: text(", ".join(p.examples), "dim"), limit=40),
    )

    def build(self, entity_id: str, members: list[Member]) -> Any:
        return None  # the census sets prefixes directly
