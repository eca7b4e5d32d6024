"""Raw keys: whatever no recogniser claimed, listed as it is.

A helper key of a known library (a lock's release signal, an unlock latch,
a session index, a scenario's fencing counter) is listed here too, with a
note saying what it is for — never as a lock or a session of its own. A
replica's copy of a key is its master's row. Znodes that are not part of a
recognised group (a lock and its contenders) are listed here as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import Column, Family, Member, countdown, own, text
from collectors.families.nodes import keyspace
from collectors.layouts import coordscope
from collectors.layouts.facts import AuxiliaryFact
from collectors.records import KeyRecord, Store, ZNodeRecord, display

PREVIEW = 120


@dataclass(frozen=True)
class RawKey:
    """A key or znode no recogniser claimed: listed as it is."""

    KIND: ClassVar[str] = "key"
    id: str
    store: Store
    node: str
    key: str
    type: str
    ttl_ms: int | None = None
    size: int = 0
    preview: str = ""
    as_of_ms: int = 0
    stale: bool = False
    version: int | None = None
    """A znode's data version (``stat.version``) as read: which write the preview shows."""


class Keys(Family):
    kind = "key"
    plural = "keys"
    title = "Other keys and znodes"
    entity = RawKey
    facts = (AuxiliaryFact, type(None))
    recognisers = (own(coordscope.recognise_auxiliary),)
    panel = "side"
    sort = "key"
    empty = "no other keys"
    columns = (
        Column("key", "key / znode", lambda k: text(k.key, title=k.key), limit=36),
        Column("node", "node", lambda k: text(k.node)),
        Column("type", "type", lambda k: text(k.type)),
        Column("ttl", "TTL", lambda k: countdown(None, k.ttl_ms), width=6),
        Column("size", "size", lambda k: text(k.size)),
        Column("preview", "preview", lambda k: text(k.preview, "dim", title=k.preview), limit=40),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{keyspace(self.view, node_id)}:{rec.key}"

    def build(self, entity_id: str, members: list[Member]) -> RawKey | None:
        view = self.view
        node_id, key = sorted(members, key=lambda m: (view.is_replica(m[0]), m))[0]
        rec, fact = view.observation((node_id, key))
        if isinstance(rec, ZNodeRecord):
            return RawKey(
                id=entity_id,
                store="zookeeper",
                node=node_id,
                key=rec.path,
                type="ephemeral" if rec.ephemeral else "znode",
                size=len(rec.data),
                preview=f"v{rec.version} · {display(rec.data[:PREVIEW])}"[:PREVIEW],
                as_of_ms=rec.read_at_ms,
                stale=view.down(node_id),
                version=rec.version,
            )
        preview = _preview(rec)
        if isinstance(fact, AuxiliaryFact):
            preview = f"({fact.library} {fact.role}) {preview}"
        return RawKey(
            id=entity_id,
            store="redis",
            node=view.group(node_id),
            key=rec.key,
            type=rec.type,
            ttl_ms=rec.ttl_ms,
            size=rec.size,
            preview=preview[:PREVIEW],
            as_of_ms=rec.read_at_ms,
            stale=view.stale(n for n, _ in members),
        )


def _preview(rec: KeyRecord) -> str:
    if rec.type == "string" and rec.value is not None:
        return display(rec.value[:PREVIEW])
    if rec.type == "hash":
        return " ".join(f"{display(k)}={display(v[:40])}" for k, v in list(rec.fields.items())[:6])
    if rec.type in ("list", "set", "zset"):
        return " ".join(display(i[:40]) for i in rec.items[:8])
    if rec.type == "stream":
        return f"{rec.size} entries"
    return ""
