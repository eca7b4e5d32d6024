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

from collectors.families.base import Cell, Column, Family, Member, Piece, StateView, pieces, status, text
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
    slots: str = ""
    """The hash slots a Redis Cluster primary serves, ``0-5460 (5461)``; empty elsewhere."""
    cluster: str = ""
    """The Redis Cluster the node is a member of (its name); empty for a standalone node."""
    feed: str = ""
    """How changes reach us: keyspace notifications, scanning (and why), watches."""
    as_of_ms: int | None = None
    """Time of the last good data read from this node."""
    detail: str = ""
    keys: int = 0
    """Keys (or znodes) kept one by one."""
    summarised: int = 0
    """Unrecognised keys counted by prefix only, past the raw-key budget."""
    scan: str = ""
    """The running scan's progress, or when the last one ended."""
    sub_buffer: int | None = None
    """Bytes the server holds in our subscriber's output buffer (``CLIENT LIST omem``)."""
    events: int = 0
    coalesced: int = 0
    gaps: int = 0


def clock(ms: int | None) -> str:
    """A wall-clock time the way every screen shows it: 14:03:07.412."""
    if not ms:
        return "–"
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def keyspace(view: StateView, node_id: str) -> str:
    """Whose keyspace a key read on this node is part of: its Redis Cluster's (a key that
    resharding or a failover moves to another primary stays the same entity), else its
    master's (a replica's copy is its master's key)."""
    node = view.node(node_id)
    return node.cluster if node is not None and node.cluster else view.group(node_id)


def _role(n: Node) -> Cell:
    role = f"{n.role} of {n.master}" if n.master else n.role
    if not n.cluster:
        return text(role)
    slots = n.slots or ("no slots" if not n.master else "")
    return pieces(
        role, (slots, "dim"), title=f"{role} in {n.cluster}" + (f": slots {slots}" if slots else "")
    )


def _status(n: Node) -> Cell:
    """Its status, and when it is not up, the time of the last good data from it."""
    shown = status(n.status)
    if n.status == "up":
        return Cell(shown.pieces, title=n.detail)
    return Cell((*shown.pieces, Piece(f"as of {clock(n.as_of_ms)}", "warn")), title=n.detail)


def _events(n: Node) -> Cell:
    """Changes seen (~ of them coalesced into a later read) and gaps (spans whose changes
    were not seen one by one: a lost subscription, a burst, a reconnect)."""
    gaps = (f"{n.gaps} gap{'' if n.gaps == 1 else 's'}", "warn") if n.gaps else ("", "")
    return pieces(f"{n.events:,}", (f"(~{n.coalesced:,})", "dim"), gaps, title="events (~coalesced), gaps")


def _keys(n: Node) -> Cell:
    if not n.summarised:
        return text(f"{n.keys:,}")
    listed = f"{n.keys:,}"
    return pieces(listed, (f"+{n.summarised:,} by prefix", "dim"), title="listed + summarised by prefix")


def _feed(n: Node) -> Cell:
    """How changes reach us, the scan's progress and our buffer on the server: word by
    word, so the page may wrap the long sentence anywhere between words."""
    parts = [(n.feed, "")]
    if n.scan:
        parts.append((n.scan, "warn" if "%" in n.scan else "dim"))
    if n.sub_buffer is not None:  # measured (a Redis node we subscribe to)
        parts.append((f"buffer {n.sub_buffer // 1024:,} KiB", "warn" if n.sub_buffer > 1 << 20 else "dim"))
    words: list[tuple[str, str]] = []
    for part, tone in parts:
        words += [("·", "dim")] if words else []
        words += [(word, tone) for word in part.split()]
    return pieces(*words, title=" · ".join(part for part, _ in parts if part))


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
        Column("role", "role (slots)", _role),
        Column("status", "status", _status),
        Column("keys", "keys", _keys),
        Column("events", "events", _events),
        Column("feed", "feed", _feed, limit=60),
    )

    def build(self, entity_id: str, members: list[Member]) -> Any:
        return None  # collectors set nodes directly (State.set_node)
