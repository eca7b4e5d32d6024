"""Locks: Redis keys and ZooKeeper znodes that say someone holds something.

Joining
-------
- Redis: every master's copy of a lock name is one *grant* of one lock
  (RedLock, node-redlock, pottery); a replica's copy is its master's grant's
  replication state, never a second holder. Grants that name different
  holders with none on a majority make the lock *split* (a failover's two
  holders). coordscope's own waiters hash adds who polls and how often.
- ZooKeeper: a lock znode and its ephemeral-sequential children are one
  lock; the lowest sequence holds (readers queued before the first writer
  share it) and every other contender waits, watching its predecessor.

Recognisers: coordscope's own layout, then the third-party Redis layouts
(:mod:`collectors.layouts.redis_locks`) and ZooKeeper recipes
(:mod:`collectors.layouts.zk_locks`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import (
    LOCKS,
    Cell,
    Column,
    Family,
    Line,
    Member,
    Piece,
    Recogniser,
    countdown,
    fmt_ms,
    own,
    pieces,
    text,
)
from collectors.families.nodes import clock
from collectors.layouts import LayoutConfig, coordscope, redis_locks, zk_locks
from collectors.layouts.facts import GroupFact, LockFact, WaitersFact, ZkLockFact
from collectors.records import KeyRecord, Store, ZNodeRecord


@dataclass(frozen=True)
class Waiter:
    """A client waiting for a lock: a poller seen in the store, or a queued znode."""

    id: str
    since_ms: int | None = None
    polls: int | None = None
    seq: int | None = None
    watches: str | None = None
    """The contender this one watches (its predecessor), for ZooKeeper locks."""
    session: str | None = None


@dataclass(frozen=True)
class ReplicaCopy:
    """Whether a replica already holds the master's copy of a key."""

    node: str
    present: bool
    same_value: bool


@dataclass(frozen=True)
class Grant:
    """One master's grant of a lock (one cell of a RedLock row)."""

    node: str
    token: str | None
    holder: str | None
    ttl_ms: int | None
    replicas: tuple[ReplicaCopy, ...] = ()
    stale: bool = False


@dataclass(frozen=True)
class Lock:
    KIND: ClassVar[str] = "lock"
    id: str
    store: Store
    name: str
    layout: str
    """Which library's layout was recognised: coordscope, redis-py, kazoo, curator, ..."""
    holder: str | None
    token: str | None = None
    fence: int | None = None
    ttl_ms: int | None = None
    holders: tuple[str, ...] = ()
    """Everyone who holds. Redis: every distinct holder the grants name, most granted
    first. ZooKeeper: every reader sharing a read lock."""
    split: bool = False
    """Redis grants that name different holders, none of them on a majority of the
    grants: the promoted replica and the dead master after a failover, RedLock
    contenders that each took some masters. ``holder`` is then only the first."""
    expires_at_ms: int | None = None
    """Wall-clock deadline computed from PTTL when the key was read."""
    waiters: tuple[Waiter, ...] = ()
    grants: tuple[Grant, ...] = ()
    nodes: tuple[str, ...] = ()
    key: str = ""
    as_of_ms: int = 0
    stale: bool = False
    """True when a node that holds part of this lock is down: the data is as of ``as_of_ms``."""
    detail: str = ""


def _third_party(rec: KeyRecord, config: LayoutConfig) -> Any:
    return redis_locks.recognise(rec, config.lock_patterns, config.token_heuristics)


def _zk_lock(path: str, children: Sequence[ZNodeRecord], config: LayoutConfig) -> GroupFact | None:
    return zk_locks.recognise(path, children, config.compiled_zk_patterns())


# --------------------------------------------------------------------------- cells

HOLDER_LIMIT = 24
"""Enough to tell tokens apart; the detail view shows a holder in full."""


def holder_cell(lock: Lock) -> Cell:
    if not lock.holder:
        return text("free", "dim")
    if lock.split:
        # grants that name different holders, none on a majority: the failure itself
        parts: list[tuple[str, str] | str] = []
        for i, h in enumerate(lock.holders):
            parts += [("≠", "bad"), (h, "bad")] if i else [(h, "bad")]
        return pieces(*parts, title="split: " + " ≠ ".join(lock.holders))
    if len(lock.holders) > 1 and lock.store == "zookeeper":  # readers sharing a read lock
        names = [f"{h}," if i < len(lock.holders) - 1 else h for i, h in enumerate(lock.holders)]
        return pieces(*((n, "bold") for n in names), title=", ".join(lock.holders))
    if len(lock.holders) > 1:
        # a minority of grants names someone else (a RedLock contender mid-attempt)
        return pieces(
            (lock.holder, "bold"),
            (f"+{len(lock.holders) - 1} minority", "dim"),
            title=f"majority: {lock.holder}; minority: {', '.join(lock.holders[1:])}",
        )
    return pieces((lock.holder, "bold"), title=lock.holder)


def _fence(lock: Lock) -> Cell:
    if lock.fence is not None:
        return text(f"#{lock.fence}", title=lock.token or "")
    if not lock.token or lock.token == lock.holder:
        return text(None)  # a bare token is the holder: it is in that column already
    return text(lock.token[:10] + "…" if len(lock.token) > 11 else lock.token, title=lock.token)


def _grants(lock: Lock) -> Cell:
    if lock.store != "redis" or not lock.grants:
        return pieces(*lock.nodes)
    parts: list[tuple[str, str]] = []
    for g in lock.grants:
        mine = g.token == lock.token
        parts.append((f"{g.node}{'■' if mine else '□'}", "good" if mine else "bad"))
        for r in g.replicas:
            ok = r.present and r.same_value
            parts.append((f"{r.node}{'✓' if ok else '✗'}", "good" if ok else "warn"))
    return pieces(*parts)


def _waiters(lock: Lock) -> Cell:
    if not lock.waiters:
        return text(None)
    names = [f"{w.id} ({w.polls} polls)" if w.polls is not None else w.id for w in lock.waiters]
    shown = [f"{n}," if i < len(names) - 1 else n for i, n in enumerate(names)]
    title = ", ".join(f"{w.id} watches {w.watches}" if w.watches else w.id for w in lock.waiters)
    return pieces(*shown, title=title)


class Locks(Family):
    kind = "lock"
    plural = "locks"
    title = "Locks"
    entity = Lock
    facts = (LockFact, WaitersFact)
    group_facts = (ZkLockFact,)
    recognisers = (own(coordscope.recognise_lock), Recogniser(LOCKS, _third_party))
    group_recognisers = (_zk_lock,)
    sort = "name"
    empty = "no locks held right now"
    columns = (
        Column(
            "name",
            "lock",
            lambda lk: text(lk.name, "dim" if lk.stale else "", title=lk.detail or lk.key),
            limit=26,
        ),
        Column("holder", "holder", holder_cell, limit=HOLDER_LIMIT),
        Column("ttl", "TTL", lambda lk: countdown(lk.expires_at_ms, lk.ttl_ms)),
        Column("fence", "fence/token", _fence),
        # fixed widths in the TUI: one RedLock run would push every later column off
        Column("grants", "where", _grants, width=22),
        Column("waiters", "waiters", _waiters, width=16),
        Column("layout", "layout", lambda lk: text(lk.layout)),
    )

    # ------------------------------------------------------------------ joining

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{fact.lock_name if isinstance(fact, WaitersFact) else fact.name}"

    def group_entity_id(self, node_id: str, path: str, fact: Any) -> str:
        return f"zk:{node_id}:{path}"

    def build(self, entity_id: str, members: list[Member]) -> Lock | None:
        if entity_id.startswith("zk:"):
            return self._zk(entity_id)
        return self._redis(entity_id, members)

    def _redis(self, entity_id: str, members: list[Member]) -> Lock | None:
        view = self.view
        by_group: dict[str, dict[str, tuple[KeyRecord, LockFact]]] = defaultdict(dict)
        waiters: dict[str, Waiter] = {}
        name = entity_id.removeprefix("redis:")
        read_at = 0
        for member in members:
            rec, fact = view.observation(member)
            assert isinstance(rec, KeyRecord)
            read_at = max(read_at, rec.read_at_ms)
            if isinstance(fact, LockFact):
                by_group[view.group(member[0])][member[0]] = (rec, fact)
            elif isinstance(fact, WaitersFact) and not view.is_replica(member[0]):
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
            for replica in view.replicas_of(group):
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
                    stale=view.down(group),
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
            stale=view.stale(n for n, _ in members),
            detail=detail,
        )

    def _zk(self, entity_id: str) -> Lock | None:
        _, node_id, path = entity_id.split(":", 2)
        fact = self.view.zk_group(node_id, path)
        if not isinstance(fact, ZkLockFact):
            return None
        holders = fact.holders
        prefix = path.rstrip("/") + "/"
        recs: dict[str, ZNodeRecord] = {}
        for c in fact.contenders:
            rec = self.view.zk_record(node_id, prefix + c.node)
            if rec is not None:
                recs[c.node] = rec
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
            as_of_ms=max((r.read_at_ms for r in recs.values()), default=0),
            stale=self.view.down(node_id),
            detail=f"{len(holders)} readers hold" if len(holders) > 1 else "",
        )

    # ------------------------------------------------------------------ telling

    def narrate(self, old: Lock | None, new: Lock | None, cause: str) -> None:
        lock = new or old
        assert lock is not None
        log = self.view.log
        where = ",".join((old.nodes if old else ()) or lock.nodes) or lock.store
        before = old.holder if old else None
        after = new.holder if new else None
        if new is not None and new.split and not (old is not None and old.split):
            where_each = ", ".join(
                f"{g.holder} on {g.node}{' (down)' if g.stale else ''}" for g in new.grants if g.holder
            )
            log("warn", where, f"{lock.name}: split, no holder has a majority: {where_each}")
        if before == after:
            return
        if after is not None and before is None:
            log("info", where, f"{lock.name}: acquired by {after} ({lock.layout})")
        elif after is None:
            verb = {"expired": "expired", "evicted": "evicted"}.get(cause, "released")
            log("warn" if verb != "released" else "info", where, f"{lock.name}: {verb} by {before}")
        else:
            log("info", where, f"{lock.name}: passed from {before} to {after}")

    @classmethod
    def detail(cls, lock: Lock) -> tuple[Line, ...]:
        """Every grant with its replicas (Redis), or the chain of contenders (ZooKeeper)."""
        lines: list[Line] = [(text(lock.name, "bold"),)]
        head: list[tuple[str, str] | str] = [(f"{lock.store} · {lock.layout} ·", "dim")]
        if lock.split:
            head += [("split", "bad"), (" ≠ ".join(lock.holders), "bad")]
        else:
            head += [("holder", "dim"), (lock.holder or "free", "good" if lock.holder else "dim")]
        if lock.fence is not None:
            head.append(f"· fence {lock.fence}")
        lines.append((pieces(*head), text("· TTL", "dim"), countdown(lock.expires_at_ms, lock.ttl_ms)))
        if lock.stale:
            lines.append((text(f"stale: a node is down; data as of {clock(lock.as_of_ms)}", "bad"),))
        if lock.detail:
            lines.append((text(lock.detail, "warn"),))
        lines.append(())
        if lock.store == "zookeeper":
            lines += _chain(lock)
        else:
            lines += _grant_lines(lock)
        return tuple(lines)


def _grant_lines(lock: Lock) -> list[Line]:
    lines: list[Line] = [(text("grants (one per master)", "bold"),)]
    for g in lock.grants:
        mine = g.token == lock.token
        lines.append(
            (
                pieces(
                    ("  ■" if mine else "  □", "good" if mine else "bad"),
                    (g.node, "bold"),
                    g.holder or "?",
                    (f"TTL {fmt_ms(g.ttl_ms)}", "dim"),
                    ("(node down)", "bad") if g.stale else "",
                ),
            )
        )
        for r in g.replicas:
            state, tone = (
                ("has it", "good")
                if r.present and r.same_value
                else (("has another value", "warn") if r.present else ("not yet", "warn"))
            )
            lines.append((pieces(("      ↳ replica", "dim"), r.node, (f": {state}", tone)),))
    if lock.waiters:
        lines += [(), (text("waiters", "bold"),)]
        for w in lock.waiters:
            since = f"since {clock(w.since_ms)}" if w.since_ms else ""
            polls = f"{w.polls} attempts" if w.polls is not None else ""
            lines.append((pieces(("  …", "dim"), w.id, (since, "dim"), (polls, "dim")),))
    return lines


def _chain(lock: Lock) -> list[Line]:
    lines: list[Line] = [
        (text("queue (lowest sequence first; each waiter watches the one above it)", "bold"),)
    ]
    if lock.holder is not None:
        lines.append(
            (
                pieces(
                    ("  ●", "good"),
                    (lock.holder, "good"),
                    (lock.token or "", "dim"),
                    (f"czxid {lock.fence}" if lock.fence is not None else "", "dim"),
                ),
            )
        )
    for depth, w in enumerate(lock.waiters, start=1):
        pad = "  " + "   " * depth
        lines.append((Cell(pieces=(Piece(pad[:-1] + "▲", "accent"),)),))
        lines.append(
            (
                pieces(
                    (pad[:-1] + "└─", "accent"),
                    (w.id, "bold"),
                    (f"seq {w.seq}" if w.seq is not None else "", "dim"),
                    (f"watches {w.watches}" if w.watches else "", "dim"),
                    (f"session {w.session}" if w.session else "", "dim"),
                    (f"queued {clock(w.since_ms)}" if w.since_ms else "", "dim"),
                ),
            )
        )
    if not lock.waiters:
        lines.append((text("  nobody waits", "dim"),))
    return lines
