"""The live view: observations from every node in, entities and events out.

Collectors report what they read (:class:`KeyRecord`, :class:`ZNodeRecord`,
node status); the state asks the recognisers what each key or znode is and
joins the answers into entities:

- every master's copy of a lock name is one grant of one lock (RedLock),
- a replica's copy of a key is its master's entity, shown as replication
  state, never as a second holder,
- a Spring Session hash and its ``expires:`` shadow are one session,
- a lock znode and its contenders are one lock with a queue of waiters,
- a run's hash and its history stream are one run, with lanes.

Each change recomputes only the entities it touches, compares them with
what viewers last saw and queues ``upserted``/``removed`` events plus
human-readable log lines; :meth:`State.drain` hands them to the bus.
Nothing here does I/O, so all of it is tested without servers.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from collectors.events import (
    KINDS,
    Branch,
    Entity,
    Event,
    Grant,
    Lock,
    Logged,
    Mark,
    Node,
    RawKey,
    Removed,
    ReplicaCopy,
    Run,
    Session,
    Snapshot,
    Transaction,
    Upserted,
    Verdict,
    Waiter,
)
from collectors.layouts import LayoutConfig, recognise_key, recognise_zk_lock
from collectors.layouts.facts import (
    AuxiliaryFact,
    Fact,
    LockFact,
    MarkFact,
    RunFact,
    RunHistoryFact,
    SessionFact,
    SessionShadowFact,
    TransactionFact,
    WaitersFact,
    ZkLockFact,
)
from collectors.records import KeyRecord, ZNodeRecord, display
from collectors.runs import Op, lanes, parse_op

EntityRef = tuple[str, str]
"""(kind, id)"""
Member = tuple[str, str]
"""(node id, key or znode path) — one observation that feeds an entity."""

MAX_RUN_OPS = 5000
ABANDONED_MS = 5000
"""A running run with no sign of life for this long is shown abandoned."""

PREVIEW = 120


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Entry:
    rec: KeyRecord | ZNodeRecord
    fact: Fact | None
    ref: EntityRef


class State:
    def __init__(
        self, layouts: LayoutConfig | None = None, clock: Callable[[], int] = now_ms, log_size: int = 300
    ) -> None:
        self._layouts = layouts or LayoutConfig()
        self._clock = clock
        self._nodes: dict[str, Node] = {}
        self._entries: dict[str, dict[str, _Entry]] = defaultdict(dict)
        self._members: dict[EntityRef, set[Member]] = defaultdict(set)
        self._entities: dict[str, dict[str, Entity]] = {k: {} for k in KINDS}
        self._zk_locks: dict[Member, ZkLockFact] = {}
        self._run_ops: dict[str, list[Op]] = defaultdict(list)
        self._quiet_at: dict[str, int] = {}
        """Running runs: when each turns abandoned unless a sign of life comes first."""
        self._causes: dict[EntityRef, str] = {}
        self._events: list[Event] = []
        self._log: deque[Logged] = deque(maxlen=log_size)
        self._seq = 0
        self.bad_data = 0
        """Observations a recogniser choked on (counted, never fatal)."""

    # ------------------------------------------------------------------ nodes

    def set_node(self, node: Node) -> None:
        old = self._nodes.get(node.id)
        node = replace(node, keys=len(self._entries.get(node.id, {})))
        if old == node:
            return
        self._nodes[node.id] = node
        if old is not None and (old.status != node.status or old.master != node.master):
            if old.master != node.master:
                self._regroup(node.id)
            for ref in self._refs_of_node(node.id):
                self._recompute(ref)
        self._emit(Upserted(entity=node))

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def _group(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        return node.master if node is not None and node.master else node_id

    def _replicas_of(self, master: str) -> list[str]:
        return sorted(n.id for n in self._nodes.values() if n.master == master)

    def _down(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.status in ("down", "lost")

    def _refs_of_node(self, node_id: str) -> set[EntityRef]:
        return {e.ref for e in self._entries.get(node_id, {}).values()}

    def _regroup(self, node_id: str) -> None:
        for path, entry in list(self._entries.get(node_id, {}).items()):
            if isinstance(entry.rec, KeyRecord):
                self._place(node_id, path, entry.rec, entry.fact)

    # ------------------------------------------------------------------ redis keys

    def apply_key(self, rec: KeyRecord) -> None:
        try:
            fact = recognise_key(rec, self._layouts)
        except Exception:  # a recogniser must never take the collector down
            self.bad_data += 1
            fact = None
        if isinstance(fact, RunHistoryFact):
            self._append_ops(fact.run_id, rec)
        self._place(rec.node, rec.key, rec, fact)

    def drop_key(self, node_id: str, raw_key: bytes, cause: str = "del") -> None:
        entry = self._entries.get(node_id, {}).pop(display(raw_key), None)
        if entry is None:
            return
        self._members[entry.ref].discard((node_id, display(raw_key)))
        self._causes[entry.ref] = cause
        self._recompute(entry.ref)

    def keys_of(self, node_id: str) -> set[str]:
        return {k for k, e in self._entries.get(node_id, {}).items() if isinstance(e.rec, KeyRecord)}

    def record(self, node_id: str, key: str) -> KeyRecord | ZNodeRecord | None:
        entry = self._entries.get(node_id, {}).get(key)
        return entry.rec if entry else None

    def _ref_for_key(self, node_id: str, rec: KeyRecord, fact: Fact | None) -> EntityRef:
        group = self._group(node_id)
        if isinstance(fact, LockFact):
            return ("lock", f"redis:{fact.name}")
        if isinstance(fact, WaitersFact):
            return ("lock", f"redis:{fact.lock_name}")
        if isinstance(fact, (SessionFact, SessionShadowFact)):
            return ("session", f"redis:{group}:{fact.group}:{fact.session_id}")
        if isinstance(fact, MarkFact):
            return ("mark", f"redis:{group}:{rec.key}")
        if isinstance(fact, TransactionFact):
            return ("transaction", fact.txn_id)
        if isinstance(fact, (RunFact, RunHistoryFact)):
            return ("run", fact.run_id)
        return ("key", f"redis:{group}:{rec.key}")

    def _place(self, node_id: str, key: str, rec: KeyRecord, fact: Fact | None) -> None:
        ref = self._ref_for_key(node_id, rec, fact)
        old = self._entries[node_id].get(key)
        self._entries[node_id][key] = _Entry(rec=rec, fact=fact, ref=ref)
        self._members[ref].add((node_id, key))
        if old is not None and old.ref != ref:
            self._members[old.ref].discard((node_id, key))
            self._recompute(old.ref)
        self._causes.pop(ref, None)
        self._recompute(ref)

    def _append_ops(self, run_id: str, rec: KeyRecord) -> None:
        ops = self._run_ops[run_id]
        for _entry_id, fields in rec.entries:
            op = parse_op(fields.get(b"op", b""))
            if op is None:
                self.bad_data += 1
            elif not ops or op.index > ops[-1].index:
                ops.append(op)
        del ops[:-MAX_RUN_OPS]

    # ------------------------------------------------------------------ znodes

    def apply_znode(self, node_id: str, rec: ZNodeRecord) -> None:
        entry = self._entries[node_id].get(rec.path)
        if entry is None:
            ref = ("key", f"zk:{node_id}:{rec.path}")
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
        entry = self._entries[node_id].get(path)
        if entry is None or not isinstance(entry.rec, ZNodeRecord):
            return []
        prefix = path.rstrip("/") + "/"
        found = []
        for name in entry.rec.children:
            child = self._entries[node_id].get(prefix + name)
            if child is not None and isinstance(child.rec, ZNodeRecord):
                found.append(child.rec)
        return found

    def _zk_changed(self, node_id: str, path: str) -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        affected = {path, parent}
        for lock_path in (path, parent):
            member = (node_id, lock_path)
            before = self._zk_locks.get(member)
            try:
                fact = recognise_zk_lock(lock_path, self._zk_children(node_id, lock_path), self._layouts)
            except Exception:
                self.bad_data += 1
                fact = None
            if fact is None:
                self._zk_locks.pop(member, None)
            else:
                self._zk_locks[member] = fact
            if (before is None) != (fact is None):
                prefix = lock_path.rstrip("/") + "/"
                affected.update(prefix + c.name for c in self._zk_children(node_id, lock_path))
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
        if (node_id, path) in self._zk_locks:
            return ("lock", f"zk:{node_id}:{path}")
        parent, _, name = path.rpartition("/")
        fact = self._zk_locks.get((node_id, parent or "/"))
        if fact is not None and any(c.node == name for c in fact.contenders):
            return ("lock", f"zk:{node_id}:{parent or '/'}")
        return ("key", f"zk:{node_id}:{path}")

    # ------------------------------------------------------------------ log

    def log(self, level: str, source: str, text: str) -> None:
        self._seq += 1
        line = Logged(at_ms=self._clock(), level=level, source=source, text=text, seq=self._seq)
        self._log.append(line)
        self._events.append(line)

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
            }
            | {"node": tuple(sorted(self._nodes.values(), key=lambda n: n.id))},
            log=tuple(self._log),
        )

    def entities(self, kind: str) -> list[Entity]:
        if kind == "node":
            return list(self._nodes.values())
        return list(self._entities[kind].values())

    def get(self, kind: str, entity_id: str) -> Entity | None:
        if kind == "node":
            return self._nodes.get(entity_id)
        return self._entities[kind].get(entity_id)

    def refresh_counts(self) -> None:
        """Re-announce nodes whose key counts changed, and runs whose process went quiet
        (called by the flusher, at least once a second while collectors run)."""
        for node_id in list(self._nodes):
            self._refresh_counts(node_id)
        now = self._clock()
        for run_id, quiet_at in list(self._quiet_at.items()):
            if run_id not in self._entities["run"]:
                del self._quiet_at[run_id]
            elif now > quiet_at:
                self._recompute(("run", run_id))  # only the ones that just went quiet

    def _refresh_counts(self, node_id: str) -> None:
        node = self._nodes[node_id]
        keys = len(self._entries.get(node_id, {}))
        if node.keys != keys:
            self._nodes[node_id] = replace(node, keys=keys)
            self._emit(Upserted(entity=self._nodes[node_id]))

    def _emit(self, event: Event) -> None:
        self._seq += 1
        self._events.append(replace(event, seq=self._seq))

    # ------------------------------------------------------------------ assembly

    def _recompute(self, ref: EntityRef) -> None:
        kind, entity_id = ref
        members = [m for m in self._members.get(ref, ()) if m[1] in self._entries.get(m[0], {})]
        if not members:
            self._members.pop(ref, None)
        builder = _BUILDERS[kind]
        try:
            new = builder(self, entity_id, members) if members else None
        except Exception:
            self.bad_data += 1
            new = None
        old = self._entities[kind].get(entity_id)
        if new == old:
            return
        if new is None:
            del self._entities[kind][entity_id]
            self._emit(Removed(kind=kind, id=entity_id))
        else:
            self._entities[kind][entity_id] = new
            self._emit(Upserted(entity=new))
        self._narrate(old, new, self._causes.pop(ref, ""))

    def _rec(self, member: Member) -> tuple[Any, Fact | None]:
        entry = self._entries[member[0]][member[1]]
        return entry.rec, entry.fact

    def _stale(self, nodes: Iterable[str]) -> bool:
        return any(self._down(n) for n in nodes)

    def _build_redis_lock(self, entity_id: str, members: list[Member]) -> Lock | None:
        by_group: dict[str, dict[str, tuple[KeyRecord, LockFact]]] = defaultdict(dict)
        waiters: dict[str, Waiter] = {}
        name = entity_id.removeprefix("redis:")
        read_at = 0
        for member in members:
            rec, fact = self._rec(member)
            read_at = max(read_at, rec.read_at_ms)
            if isinstance(fact, LockFact):
                by_group[self._group(member[0])][member[0]] = (rec, fact)
            elif isinstance(fact, WaitersFact) and not self._nodes.get(member[0], _NOBODY).master:
                for client, since, polls in fact.waiters:
                    waiters[client] = Waiter(id=client, since_ms=since, polls=polls)
        grants: list[Grant] = []
        facts: dict[str, LockFact] = {}
        records: dict[str, KeyRecord] = {}
        for group, by_node in sorted(by_group.items()):
            if group not in by_node:
                continue  # only a replica still has it: the master released it already
            rec, fact = by_node[group]
            copies = []
            for replica in self._replicas_of(group):
                copy = by_node.get(replica)
                copies.append(
                    ReplicaCopy(
                        node=replica,
                        present=copy is not None,
                        same_value=copy is not None and copy[0].value == rec.value,
                    )
                )
            grants.append(
                Grant(
                    node=group,
                    token=fact.token,
                    holder=fact.holder,
                    ttl_ms=rec.ttl_ms,
                    replicas=tuple(copies),
                    stale=self._down(group),
                )
            )
            facts[group] = fact
            records[group] = rec
        if not grants and not waiters:
            return None
        holder = token = None
        fence = ttl_ms = expires = None
        layout = "coordscope" if name.startswith("coordscope:") else "?"
        detail = ""
        holders: tuple[str, ...] = ()
        split = False
        if grants:
            tally: dict[str | None, int] = defaultdict(int)
            for g in grants:
                tally[g.token] += 1
            token = max(tally, key=lambda t: (tally[t], t is not None))
            lead = next(g for g in grants if g.token == token)
            fact = facts[lead.node]
            holder, fence, ttl_ms = lead.holder, fact.fence, lead.ttl_ms
            expires = records[lead.node].expires_at_ms
            layout, detail = fact.layout, fact.detail
            if len(grants) > 1 and layout in ("redis-py", "node-redlock", "token"):
                layout = "node-redlock" if layout != "token" else "redlock"
            if len(tally) > 1:
                detail = f"{len(tally)} different holders across {len(grants)} masters"
            ranked = sorted(grants, key=lambda g: (-tally[g.token], g.node))
            holders = tuple(dict.fromkeys(g.holder for g in ranked if g.holder is not None))
            split = len(holders) > 1 and 2 * tally[token] <= len(grants)
        return Lock(
            id=entity_id,
            store="redis",
            name=name,
            layout=layout,
            holder=holder,
            holders=holders,
            split=split,
            token=token,
            fence=fence,
            ttl_ms=ttl_ms,
            expires_at_ms=expires,
            waiters=tuple(sorted(waiters.values(), key=lambda w: (w.since_ms or 0, w.id))),
            grants=tuple(grants),
            nodes=tuple(g.node for g in grants),
            key=name,
            as_of_ms=read_at,
            stale=self._stale(n for n, _ in members),
            detail=detail,
        )

    def _build_zk_lock(self, entity_id: str, members: list[Member]) -> Lock | None:
        _, node_id, path = entity_id.split(":", 2)
        fact = self._zk_locks.get((node_id, path))
        if fact is None:
            return None
        holders = fact.holders
        prefix = path.rstrip("/") + "/"
        recs: dict[str, ZNodeRecord] = {}
        for c in fact.contenders:
            entry = self._entries[node_id].get(prefix + c.node)
            if entry is not None and isinstance(entry.rec, ZNodeRecord):
                recs[c.node] = entry.rec
        waiters = []
        previous_writer: str | None = None
        previous: str | None = None
        for c in fact.contenders:
            watches = previous_writer if c.kind == "read" else previous
            if c not in holders:
                waiters.append(
                    Waiter(
                        id=c.ident,
                        seq=c.seq,
                        watches=watches,
                        session=f"0x{c.session:x}",
                        since_ms=recs[c.node].ctime_ms if c.node in recs else None,
                    )
                )
            previous = c.node
            if c.kind == "write":
                previous_writer = c.node
        lead = holders[0] if holders else None
        lead_rec = recs.get(lead.node) if lead else None
        detail = f"{len(holders)} readers hold" if len(holders) > 1 else ""
        read_at = max((r.read_at_ms for r in recs.values()), default=0)
        return Lock(
            id=entity_id,
            store="zookeeper",
            name=path,
            layout=fact.layout,
            holder=lead.ident if lead else None,
            holders=tuple(c.ident for c in holders),
            token=lead.node if lead else None,
            fence=lead_rec.czxid if lead_rec else None,
            waiters=tuple(waiters),
            nodes=(node_id,),
            key=path,
            as_of_ms=read_at,
            stale=self._down(node_id),
            detail=detail,
        )

    def _build_lock(self, entity_id: str, members: list[Member]) -> Lock | None:
        if entity_id.startswith("zk:"):
            return self._build_zk_lock(entity_id, members)
        return self._build_redis_lock(entity_id, members)

    def _prefer_master(self, members: list[Member], want: type) -> tuple[str, KeyRecord, Any] | None:
        best = None
        for node_id, key in sorted(members):
            rec, fact = self._rec((node_id, key))
            if isinstance(fact, want):
                if not self._nodes.get(node_id, _NOBODY).master:
                    return node_id, rec, fact
                best = best or (node_id, rec, fact)
        return best

    def _build_session(self, entity_id: str, members: list[Member]) -> Session | None:
        found = self._prefer_master(members, SessionFact)
        if found is None:
            return None
        node_id, rec, fact = found
        shadow = self._prefer_master(members, SessionShadowFact)
        ttl, expires, state = rec.ttl_ms, rec.expires_at_ms, "live"
        if fact.layout == "spring-session":
            if shadow is not None:
                ttl, expires = shadow[1].ttl_ms, shadow[1].expires_at_ms
            else:
                state = "deleted" if fact.max_inactive_s == 0 else "expired"
        return Session(
            id=entity_id,
            store="redis",
            layout=fact.layout,
            key=rec.key,
            session_id=fact.session_id,
            user=fact.user,
            ttl_ms=ttl,
            expires_at_ms=expires,
            attributes=dict(fact.attributes),
            created_ms=fact.created_ms,
            last_access_ms=fact.last_access_ms,
            max_inactive_s=fact.max_inactive_s,
            state=state,
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self._stale(n for n, _ in members),
        )

    def _build_mark(self, entity_id: str, members: list[Member]) -> Mark | None:
        found = self._prefer_master(members, MarkFact)
        if found is None:
            return None
        node_id, rec, fact = found
        return Mark(
            id=entity_id,
            store="redis",
            layout=fact.layout,
            key=rec.key,
            state=fact.state,
            owner=fact.owner,
            ttl_ms=rec.ttl_ms,
            expires_at_ms=rec.expires_at_ms,
            detail=dict(fact.detail),
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self._stale(n for n, _ in members),
        )

    def _build_transaction(self, entity_id: str, members: list[Member]) -> Transaction | None:
        found = self._prefer_master(members, TransactionFact)
        if found is None:
            return None
        node_id, rec, fact = found
        return Transaction(
            id=entity_id,
            protocol=fact.protocol,
            state=fact.state,
            branches=tuple(Branch(id=b, state=s, detail=d) for b, s, d in fact.branches),
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self._stale(n for n, _ in members),
        )

    def _build_run(self, entity_id: str, members: list[Member]) -> Run | None:
        found = self._prefer_master(members, RunFact)
        if found is None:
            return None
        _, rec, fact = found
        meta = fact.meta
        ops = self._run_ops.get(entity_id, [])
        verdict = _verdict(meta.get("verdict", ""))
        status, error = meta.get("status", "?"), meta.get("error", "")
        alive = _int(meta.get("alive_ms")) or _int(meta.get("started_ms"))
        self._quiet_at.pop(entity_id, None)
        if status == "running" and alive is not None and self._clock() - alive <= ABANDONED_MS:
            self._quiet_at[entity_id] = alive + ABANDONED_MS
        elif status == "running" and alive is not None:
            status = "abandoned"
            error = (
                f"the process running it ({meta.get('owner', '?')}) stopped answering: "
                f"no sign of life for over {ABANDONED_MS // 1000} s"
            )
        return Run(
            id=entity_id,
            scenario=meta.get("scenario", "?"),
            status=status,
            params=_json_dict(meta.get("params", "")),
            faults=tuple(_json_list(meta.get("faults"))),
            started_ms=_int(meta.get("started_ms")),
            ended_ms=_int(meta.get("ended_ms")),
            verdict=verdict,
            actors=tuple(_json_list(meta.get("actors"))),
            lanes=lanes(ops),
            ops=len(ops),
            last_op=_describe(ops[-1]) if ops else "",
            error=error,
            table=_json_table(meta.get("table")),
            as_of_ms=rec.read_at_ms,
        )

    def _build_raw(self, entity_id: str, members: list[Member]) -> RawKey | None:
        ordered = sorted(members, key=lambda m: (bool(self._nodes.get(m[0], _NOBODY).master), m))
        node_id, key = ordered[0]
        rec, fact = self._rec((node_id, key))
        note = f"{fact.library} {fact.role}" if isinstance(fact, AuxiliaryFact) else ""
        if isinstance(rec, ZNodeRecord):
            kind = "ephemeral" if rec.ephemeral else "znode"
            preview = display(rec.data[:PREVIEW])
            return RawKey(
                id=entity_id,
                store="zookeeper",
                node=node_id,
                key=rec.path,
                type=kind,
                size=len(rec.data),
                preview=preview,
                as_of_ms=rec.read_at_ms,
                stale=self._down(node_id),
            )
        preview = _preview(rec)
        if note:
            preview = f"({note}) {preview}"
        return RawKey(
            id=entity_id,
            store="redis",
            node=self._group(node_id),
            key=rec.key,
            type=rec.type,
            ttl_ms=rec.ttl_ms,
            size=rec.size,
            preview=preview[:PREVIEW],
            as_of_ms=rec.read_at_ms,
            stale=self._stale(n for n, _ in members),
        )

    # ------------------------------------------------------------------ narration

    def _narrate(self, old: Entity | None, new: Entity | None, cause: str) -> None:
        entity = new or old
        if isinstance(entity, Lock):
            self._narrate_lock(_as(Lock, old), _as(Lock, new), cause)
        elif isinstance(entity, Session):
            self._narrate_session(_as(Session, old), _as(Session, new), cause)
        elif isinstance(entity, Run):
            self._narrate_run(_as(Run, old), _as(Run, new))

    def _narrate_session(self, old: Session | None, new: Session | None, cause: str) -> None:
        if old is None and new is not None:
            user = new.user or "?"
            self.log("info", new.node, f"session {new.session_id} created ({new.layout}, user {user})")
        elif new is None and old is not None:
            self.log("info", old.node, f"session {old.session_id} {cause or 'removed'}")
        elif old is not None and new is not None and old.state != new.state:
            self.log("info", new.node, f"session {new.session_id} is now {new.state}")

    def _narrate_run(self, old: Run | None, new: Run | None) -> None:
        if new is None or (old is not None and old.status == new.status):
            return
        if old is None and new.status != "running":
            return  # a finished run seen for the first time (at start-up): no news
        text = f"run {new.id} ({new.scenario}) {new.status}"
        if new.verdict is not None:
            text = f"run {new.id} ({new.scenario}) {new.verdict.summary}"
        elif new.error:
            text += f": {new.error}"
        level = {"violated": "warn", "error": "error", "abandoned": "warn"}.get(new.status, "info")
        self.log(level, "runs", text)

    def _narrate_lock(self, old: Lock | None, new: Lock | None, cause: str) -> None:
        lock = new or old
        assert lock is not None
        where = ",".join((old.nodes if old else ()) or lock.nodes) or lock.store
        before = old.holder if old else None
        after = new.holder if new else None
        if new is not None and new.split and not (old is not None and old.split):
            where_each = ", ".join(
                f"{g.holder} on {g.node}{' (down)' if g.stale else ''}" for g in new.grants if g.holder
            )
            self.log("warn", where, f"{lock.name}: split, no holder has a majority: {where_each}")
        if before == after:
            return
        if after is not None and before is None:
            self.log("info", where, f"{lock.name}: acquired by {after} ({lock.layout})")
        elif after is None:
            verb = {"expired": "expired", "evicted": "evicted"}.get(cause, "released")
            self.log("warn" if verb != "released" else "info", where, f"{lock.name}: {verb} by {before}")
        else:
            self.log("info", where, f"{lock.name}: passed from {before} to {after}")


_NOBODY = Node(id="", store="redis", address="")
_E = TypeVar("_E")


def _as(cls: type[_E], entity: Entity | None) -> _E | None:
    return entity if isinstance(entity, cls) else None


_BUILDERS: dict[str, Callable[[State, str, list[Member]], Entity | None]] = {
    "lock": State._build_lock,
    "session": State._build_session,
    "mark": State._build_mark,
    "transaction": State._build_transaction,
    "run": State._build_run,
    "key": State._build_raw,
    "node": lambda s, i, m: None,
}


def _preview(rec: KeyRecord) -> str:
    if rec.type == "string" and rec.value is not None:
        return display(rec.value[:PREVIEW])
    if rec.type == "hash":
        pairs = [f"{display(k)}={display(v[:40])}" for k, v in list(rec.fields.items())[:6]]
        return " ".join(pairs)
    if rec.type in ("list", "set", "zset"):
        return " ".join(display(i[:40]) for i in rec.items[:8])
    if rec.type == "stream":
        return f"{rec.size} entries"
    return ""


def _describe(op: Op) -> str:
    parts = [f"{op.t_ms}ms", op.actor, op.kind, op.f]
    if op.key:
        parts.append(op.key)
    if op.fence is not None:
        parts.append(f"fence {op.fence}")
    if op.note:
        parts.append(op.note)
    return " ".join(parts)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _json_dict(raw: str | None) -> dict[str, str]:
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _json_list(raw: str | None) -> list[str]:
    try:
        data = json.loads(raw or "[]")
    except ValueError:
        return []
    return [str(v) for v in data] if isinstance(data, list) else []


def _json_table(raw: str | None) -> tuple[tuple[str, ...], ...]:
    try:
        rows = json.loads(raw or "[]")
    except ValueError:
        return ()
    if not isinstance(rows, list):
        return ()
    return tuple(tuple(str(c) for c in row) for row in rows[:500] if isinstance(row, list))


def _verdict(raw: str) -> Verdict | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Verdict(
            holds=bool(data["holds"]),
            invariant=str(data["invariant"]),
            summary=str(data["summary"]),
            actors=tuple(str(a) for a in data.get("actors", [])),
            keys=tuple(str(k) for k in data.get("keys", [])),
            at_ms=int(data["at_ms"]) if data.get("at_ms") is not None else None,
            ops=tuple(int(i) for i in data.get("ops", [])),
            findings=tuple(str(f) for f in data.get("findings", [])),
        )
    except (ValueError, KeyError, TypeError):
        return Verdict(holds=False, invariant="?", summary="unreadable verdict")
