"""Nodes: the Redis servers and ZooKeeper ensembles coordscope watches.

Collectors report a node's status themselves (there is nothing to recognise):
up or down with the time of its last good read, its role, how changes reach
us (notifications, scanning, watches), and counts of events, coalesced
events and gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from collectors.families.base import Cell, Column, Family, Member, status, text
from collectors.records import Store


@dataclass(frozen=True)
class Node:
    KIND: ClassVar[str] = "node"
    id: str
    store: Store
    address: str
    role: str = "unknown"
    status: str = "connecting"
    """connecting | up | down, or for ZooKeeper: up | suspended | lost | down."""
    master: str | None = None
    feed: str = ""
    """How changes reach us: keyspace notifications, scanning (and why), watches."""
    as_of_ms: int | None = None
    """Time of the last good data read from this node."""
    detail: str = ""
    keys: int = 0
    events: int = 0
    coalesced: int = 0
    gaps: int = 0


def clock(ms: int | None) -> str:
    """A wall-clock time the way every screen shows it: 14:03:07.412."""
    if not ms:
        return "–"
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def _as_of(n: Node) -> Cell:
    if n.status == "up":
        return text("now", "dim")
    return text(f"as of {clock(n.as_of_ms)}", "warn")


class Nodes(Family):
    kind = "node"
    plural = "nodes"
    title = "Nodes"
    entity = Node
    panel = "top"
    sort = "id"
    empty = "no node watched"
    columns = (
        Column("id", "node", lambda n: text(n.id, "bold")),
        Column("store", "store", lambda n: text(n.store)),
        Column("address", "address", lambda n: text(n.address)),
        Column("role", "role", lambda n: text(f"{n.role} of {n.master}" if n.master else n.role)),
        Column("status", "status", lambda n: Cell(status(n.status).pieces, title=n.detail)),
        Column("asof", "data", _as_of),
        Column("keys", "keys", lambda n: text(n.keys)),
        Column("events", "events", lambda n: text(f"{n.events} (~{n.coalesced})")),
        Column("gaps", "gaps", lambda n: text(n.gaps, "warn" if n.gaps else "dim")),
        Column("feed", "feed", lambda n: text(n.feed, title=n.feed), limit=44),
    )

    def build(self, entity_id: str, members: list[Member]) -> Any:
        return None  # collectors set nodes directly (State.set_node)
