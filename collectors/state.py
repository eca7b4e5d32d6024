"""The live view: observations from every node in, entities and events out.

Collectors report what they read (:class:`KeyRecord`, :class:`ZNodeRecord`,
node status). The state asks the recognisers of every family (in their
order, :mod:`collectors.families.base`) what each key is; the family that
owns the answer says which entity the key feeds, and joins all the keys and
nodes that feed one entity into it. ZooKeeper is read as groups: a znode and
its children may together be one entity (a lock and its contenders).

Each change recomputes only the entities it touches, compares them with
what viewers last saw and queues ``upserted``/``removed`` events plus the
family's log lines; :meth:`State.drain` hands them to the bus. An entity
may ask to be rebuilt at a moment (a lease ends, a heartbeat goes quiet):
:meth:`State.refresh_counts`, called by the bus at least once a second,
does it then. Nothing here does I/O, so all of it is tested without servers.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from collectors.census import Budgets
from collectors.events import Entity, Event, Logged, Removed, Snapshot, Upserted
from collectors.families import REGISTRY
from collectors.families.base import EntityRef, Family, Member, first_fact, key_chain
from collectors.families.nodes import Node
from collectors.layouts import LayoutConfig
from collectors.layouts.facts import Fact, GroupFact
from collectors.limits import Limits
from collectors.records import KeyRecord, ZNodeRecord, display


def now_ms() -> int:
    return int(time.time() * 1000)


EXPIRY_SLACK_MS = 100
"""Two reads of one key whose expiries differ by less than this saw the same TTL (the
remaining time is read at a different moment each time)."""


def _unchanged(held: KeyRecord | ZNodeRecord, read: KeyRecord) -> bool:
    """Does this read of a key say what the one we hold said?"""
    if not isinstance(held, KeyRecord):
        return False
    same = _body(held) == _body(read)
    if not same or (held.expires_at_ms is None) != (read.expires_at_ms is None):
        return False
    return held.expires_at_ms is None or abs(held.expires_at_ms - (read.expires_at_ms or 0)) < EXPIRY_SLACK_MS


def _body(rec: KeyRecord) -> tuple[object, ...]:
    """What a read says of a key, but for when it was read (and so its TTL's remainder)."""
    return (rec.type, rec.value, rec.fields, rec.items, rec.entries, rec.size, rec.truncated, rec.groups)


@dataclass
class _Entry:
    rec: KeyRecord | ZNodeRecord
    fact: Fact | None
    ref: EntityRef


class State:
    def __init__(
        self,
        layouts: LayoutConfig | None = None,
        clock: Callable[[], int] = now_ms,
        log_size: int = 300,
        families: tuple[type[Family], ...] = REGISTRY,
        limits: Limits | None = None,
    ) -> None:
        self._layouts = layouts or LayoutConfig()
        self.limits = limits or Limits()
        self._clock = clock
        self.families: dict[str, Family] = {cls.kind: cls(self) for cls in families}
        self._owner: dict[type[Any], Family] = {}
        for family in self.families.values():
            for fact_type in (*family.facts, *family.group_facts):
                self._owner[fact_type] = family
        self._raw = self._owner[type(None)]
        """The family that lists what nobody recognised."""
        self._chain = key_chain(families)
        self._group_chain = [g for f in self.families.values() for g in f.group_recognisers]
        self._nodes: dict[str, Node] = {}
        self._entries: dict[str, dict[str, _Entry]] = defaultdict(dict)
        self._members: dict[EntityRef, set[Member]] = defaultdict(set)
        self._entities: dict[str, dict[str, Entity]] = {k: {} for k in self.families}
        self._followers: dict[Member, set[EntityRef]] = defaultdict(set)
        """Entities that read a key they are not made of (a ring reads its workers' queues):
        rebuilt when that key changes."""
        self._follows: dict[EntityRef, set[Member]] = {}
        self._groups: dict[Member, GroupFact] = {}
        """ZooKeeper groups: (node, znode path) -> what that znode and its children are."""
        self._rechecks: dict[EntityRef, int] = {}
        """When each entity asked to be rebuilt (a lease ends, a heartbeat goes quiet)."""
        self._due: list[tuple[int, EntityRef]] = []
        """The same moments as a heap: a flush looks at the ones due, not at every entity
        (20,000 sessions with a TTL each cost a walk of them all per flush)."""
        self._causes: dict[EntityRef, str] = {}
        self._events: list[Event] = []
        self._log: deque[Logged] = deque(maxlen=log_size)
        self._seq = 0
        self._bad = 0
        self._budgets = Budgets(
            self._raw.kind,
            self.limits.raw_keys,
            self.limits.family_keys,
            self.limits.prefixes,
            self._clock,
            lambda node, text: self.log("info", node, text),
        )
        """Keys listed one by one per node and family; the census of the rest."""

    @property
    def bad_data(self) -> int:
        """Observations a recogniser or a family choked on (counted, never fatal)."""
        return self._bad + sum(f.bad_entries() for f in self.families.values())

    # ------------------------------------------------------------------ what families see

    def now(self) -> int:
        return self._clock()

    def group(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        return node.master if node is not None and node.master else node_id

    def is_replica(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and bool(node.master)

    def replicas_of(self, master: str) -> list[str]:
        return sorted(n.id for n in self._nodes.values() if n.master == master)

    def down(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.status in ("down", "lost")

    def stale(self, nodes: Iterable[str]) -> bool:
        return any(self.down(n) for n in nodes)

    def observation(self, member: Member) -> tuple[KeyRecord | ZNodeRecord, Fact | None]:
        entry = self._entries[member[0]][member[1]]
        return entry.rec, entry.fact

    def zk_record(self, node_id: str, path: str) -> ZNodeRecord | None:
        entry = self._entries.get(node_id, {}).get(path)
        return entry.rec if entry is not None and isinstance(entry.rec, ZNodeRecord) else None

    def zk_group(self, node_id: str, path: str) -> GroupFact | None:
        return self._groups.get((node_id, path))

    def recheck(self, ref: EntityRef, at_ms: int) -> None:
        if self._rechecks.get(ref) != at_ms:
            self._rechecks[ref] = at_ms
            heapq.heappush(self._due, (at_ms, ref))
            if len(self._due) > 4 * len(self._rechecks) + 1024:  # mostly moved moments: rebuild
                self._due = [(at, r) for r, at in self._rechecks.items()]
                heapq.heapify(self._due)

    def follow(self, ref: EntityRef, member: Member) -> None:
        """``ref`` read ``member`` while it was built: build it again when that key changes."""
        self._followers[member].add(ref)
        self._follows.setdefault(ref, set()).add(member)

    def _unfollow(self, ref: EntityRef) -> None:
        for member in self._follows.pop(ref, ()):
            followers = self._followers.get(member)
            if followers is not None:
                followers.discard(ref)
                if not followers:
                    del self._followers[member]

    def _tell_followers(self, member: Member) -> None:
        for ref in list(self._followers.get(member, ())):
            self._recompute(ref)

    def log(self, level: str, source: str, text: str) -> None:
        self._seq += 1
        line = Logged(at_ms=self._clock(), level=level, source=source, text=text, seq=self._seq)
        self._log.append(line)
        self._events.append(line)

    # ------------------------------------------------------------------ nodes

    def set_node(self, node: Node) -> None:
        old = self._nodes.get(node.id)
        node = replace(node, keys=len(self._entries.get(node.id, {})))
        if old == node:
            return
        self._nodes[node.id] = node
        self._entities["node"][node.id] = node
        if old is not None and (old.status != node.status or old.master != node.master):
            if old.master != node.master:
                self._regroup(node.id)
            for ref in self._refs_of_node(node.id):
                self._recompute(ref)
        self._emit(Upserted(entity=node))

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def forget_node(self, node_id: str) -> None:
        """A node that is no longer watched (it left its Redis Cluster), its keys dropped."""
        if self._nodes.pop(node_id, None) is not None:
            self._entities["node"].pop(node_id, None)
            self._emit(Removed(kind="node", id=node_id))

    def _refs_of_node(self, node_id: str) -> set[EntityRef]:
        return {e.ref for e in self._entries.get(node_id, {}).values()}

    def _regroup(self, node_id: str) -> None:
        for path, entry in list(self._entries.get(node_id, {}).items()):
            if isinstance(entry.rec, KeyRecord):
                self._place(node_id, path, entry.rec, entry.fact)

    # ------------------------------------------------------------------ redis keys

    def apply_key(self, rec: KeyRecord) -> None:
        old = self._entries[rec.node].get(rec.key)
        if rec.cause == "scan" and old is not None and _unchanged(old.rec, rec):
            # A rescan read what we hold: counted and kept as read, nothing to tell viewers.
            old.rec = rec
            self._budgets.keep(rec, old.ref[0], not self.is_replica(rec.node), True)
            return
        try:
            fact = first_fact(self._chain, rec, self._layouts)
        except Exception:  # a recogniser must never take the collector down
            self._bad += 1
            fact = None
        ref = self._ref_for_key(rec.node, rec, fact)
        if not self._keep(rec, ref, old is not None):
            return
        family = self._owner.get(type(fact), self._raw)
        try:
            family.observed(rec, fact)
        except Exception:
            self._bad += 1
        self._place(rec.node, rec.key, rec, fact, ref)

    def _keep(self, rec: KeyRecord, ref: EntityRef, listed: bool) -> bool:
        """Is this key listed, or (past its family's budget on this node) only counted?"""
        if listed:
            return self._budgets.keep(rec, ref[0], not self.is_replica(rec.node), True)
        if self.is_replica(rec.node):
            # A replica's copy is listed beside its master's, or not at all. It may be read
            # first: a family's copy is listed while its master still has room for it (its
            # entity shows the replication state); a raw key's only beside the master's
            # (its row shows none, and the replica's first keys are not the master's).
            master = self.group(rec.node)
            room = ref[0] != self._raw.kind and self._budgets.room(master, ref[0])
            joins = rec.key in self._entries.get(master, {}) or room
        else:
            joins = bool(self._members.get(ref))
        return self._budgets.keep(rec, ref[0], not self.is_replica(rec.node), joins)

    def scan_started(self, node_id: str) -> None:
        self._budgets.scan_started(node_id)

    def scan_ended(self, node_id: str) -> None:
        self._budgets.scan_ended(node_id)

    def summarising(self, node_id: str) -> bool:
        return self._budgets.summarising(node_id)

    def drop_key(self, node_id: str, raw_key: bytes, cause: str = "del") -> None:
        entry = self._entries.get(node_id, {}).pop(display(raw_key), None)
        if entry is None:
            if not self.is_replica(node_id):
                self._budgets.removed(node_id, display(raw_key))
            return
        self._budgets.placed(node_id, entry.ref[0], None)
        self._members[entry.ref].discard((node_id, display(raw_key)))
        self._causes[entry.ref] = cause
        self._recompute(entry.ref)
        self._tell_followers((node_id, display(raw_key)))

    def keys_of(self, node_id: str) -> set[str]:
        return {k for k, e in self._entries.get(node_id, {}).items() if isinstance(e.rec, KeyRecord)}

    def record(self, node_id: str, key: str) -> KeyRecord | ZNodeRecord | None:
        entry = self._entries.get(node_id, {}).get(key)
        return entry.rec if entry else None

    def _ref_for_key(self, node_id: str, rec: KeyRecord, fact: Fact | None) -> EntityRef:
        family = self._owner.get(type(fact), self._raw)
        try:
            return family.kind, family.entity_id(node_id, rec, fact)
        except Exception:
            self._bad += 1
            return self._raw.kind, self._raw.entity_id(node_id, rec, None)

    def _place(
        self, node_id: str, key: str, rec: KeyRecord, fact: Fact | None, ref: EntityRef | None = None
    ) -> None:
        ref = ref or self._ref_for_key(node_id, rec, fact)
        old = self._entries[node_id].get(key)
        self._entries[node_id][key] = _Entry(rec=rec, fact=fact, ref=ref)
        self._budgets.placed(node_id, old.ref[0] if old is not None else None, ref[0])
        self._members[ref].add((node_id, key))
        if old is not None and old.ref != ref:
            self._members[old.ref].discard((node_id, key))
            self._recompute(old.ref)
        self._causes.pop(ref, None)
        self._recompute(ref)
        self._tell_followers((node_id, key))

    # ------------------------------------------------------------------ znodes

    def apply_znode(self, node_id: str, rec: ZNodeRecord) -> None:
        entry = self._entries[node_id].get(rec.path)
        if entry is None:
            ref = (self._raw.kind, f"zk:{node_id}:{rec.path}")
            self._entries[node_id][rec.path] = _Entry(rec=rec, fact=None, ref=ref)
        else:
            entry.rec = rec
        self._zk_changed(node_id, rec.path)

    def drop_znode(self, node_id: str, path: str) -> None:
        entry = self._entries.get(node_id, {}).pop(path, None)
        if entry is None:
            return
        self._members[entry.ref].discard((node_id, path))
        self._causes[entry.ref] = "deleted"
        self._zk_changed(node_id, path)
        self._recompute(entry.ref)

    def znode_paths(self, node_id: str) -> set[str]:
        return {k for k, e in self._entries.get(node_id, {}).items() if isinstance(e.rec, ZNodeRecord)}

    def _zk_children(self, node_id: str, path: str) -> list[ZNodeRecord]:
        parent = self.zk_record(node_id, path)
        if parent is None:
            return []
        prefix = path.rstrip("/") + "/"
        found = []
        for name in parent.children:
            child = self.zk_record(node_id, prefix + name)
            if child is not None:
                found.append(child)
        return found

    def _recognise_group(self, path: str, children: list[ZNodeRecord]) -> GroupFact | None:
        for recognise in self._group_chain:
            fact = recognise(path, children, self._layouts)
            if fact is not None:
                return fact
        return None

    def _zk_changed(self, node_id: str, path: str) -> None:
        """A znode changed: what it and its parent are as groups may have changed, and
        with them which entity each of their children feeds."""
        parent = path.rsplit("/", 1)[0] or "/"
        affected = {path, parent}
        for group_path in (path, parent):
            member = (node_id, group_path)
            before = self._groups.get(member)
            try:
                fact = self._recognise_group(group_path, self._zk_children(node_id, group_path))
            except Exception:
                self._bad += 1
                fact = None
            if fact is None:
                self._groups.pop(member, None)
            else:
                self._groups[member] = fact
            if (before is None) != (fact is None) or type(before) is not type(fact):
                prefix = group_path.rstrip("/") + "/"
                affected.update(prefix + c.name for c in self._zk_children(node_id, group_path))
        for p in affected:
            entry = self._entries[node_id].get(p)
            if entry is None or not isinstance(entry.rec, ZNodeRecord):
                continue
            ref = self._ref_for_znode(node_id, p)
            if ref != entry.ref:
                self._members[entry.ref].discard((node_id, p))
                self._recompute(entry.ref)
                entry.ref = ref
            self._members[ref].add((node_id, p))
            self._recompute(ref)

    def _ref_for_znode(self, node_id: str, path: str) -> EntityRef:
        own = self._groups.get((node_id, path))
        if own is not None:
            family = self._owner[type(own)]
            return family.kind, family.group_entity_id(node_id, path, own)
        parent, _, name = path.rpartition("/")
        group = self._groups.get((node_id, parent or "/"))
        if group is not None and group.claims(name):
            family = self._owner[type(group)]
            return family.kind, family.group_entity_id(node_id, parent or "/", group)
        return self._raw.kind, f"zk:{node_id}:{path}"

    # ------------------------------------------------------------------ output

    def drain(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def seq(self) -> int:
        return self._seq

    def snapshot(self) -> Snapshot:
        self.refresh_counts()
        return Snapshot(
            seq=self._seq,
            at_ms=self._clock(),
            entities={
                kind: tuple(sorted(es.values(), key=lambda e: e.id)) for kind, es in self._entities.items()
            },
            log=tuple(self._log),
        )

    def counts(self) -> dict[str, int]:
        """How many entities of each kind there are now."""
        return {kind: len(es) for kind, es in self._entities.items()}

    def entities(self, kind: str) -> list[Entity]:
        return list(self._entities[kind].values())

    def get(self, kind: str, entity_id: str) -> Entity | None:
        return self._entities.get(kind, {}).get(entity_id)

    def refresh_counts(self) -> None:
        """Re-announce nodes whose key counts changed, and rebuild the entities whose
        moment came (called by the flusher, at least once a second while collectors run)."""
        for node_id in list(self._nodes):
            self._refresh_counts(node_id)
        upserts, gone = self._budgets.take_changes()
        if upserts or gone:
            for entity in upserts:
                self._entities["prefix"][entity.id] = entity
                self._emit(Upserted(entity=entity))
            for entity_id in gone:
                self._entities["prefix"].pop(entity_id, None)
                self._emit(Removed(kind="prefix", id=entity_id))
        now = self._clock()
        while self._due and self._due[0][0] <= now:
            at, ref = heapq.heappop(self._due)
            if self._rechecks.get(ref) == at:  # not moved or dropped since it was pushed
                self._recompute(ref)

    def _refresh_counts(self, node_id: str) -> None:
        node = self._nodes[node_id]
        keys = len(self._entries.get(node_id, {}))
        summarised = self._budgets.summarised(node_id)
        if node.keys != keys or node.summarised != summarised:
            self._nodes[node_id] = self._entities["node"][node_id] = replace(
                node, keys=keys, summarised=summarised
            )
            self._emit(Upserted(entity=self._nodes[node_id]))

    def _emit(self, event: Event) -> None:
        self._seq += 1
        self._events.append(replace(event, seq=self._seq))

    # ------------------------------------------------------------------ assembly

    def _recompute(self, ref: EntityRef) -> None:
        kind, entity_id = ref
        self._rechecks.pop(ref, None)
        cause = self._causes.pop(ref, "")  # taken now: a rebuild that changes nothing keeps none
        members = [m for m in self._members.get(ref, ()) if m[1] in self._entries.get(m[0], {})]
        if not members:
            self._members.pop(ref, None)
        family = self.families[kind]
        self._unfollow(ref)  # what it reads now, its build says again
        try:
            new = family.build(entity_id, members) if members else None
        except Exception:
            self._bad += 1
            new = None
        old = self._entities[kind].get(entity_id)
        if new == old:
            return
        if new is None:
            del self._entities[kind][entity_id]
            family.forget(entity_id)
            self._rechecks.pop(ref, None)
            self._emit(Removed(kind=kind, id=entity_id))
        else:
            self._entities[kind][entity_id] = new
            self._emit(Upserted(entity=new))
        try:
            family.narrate(old, new, cause)
        except Exception:
            self._bad += 1
