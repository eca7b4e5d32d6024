"""What each dashboard table shows, one column list per kind of entity."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

from app.tui.text import safe
from app.tui.widgets.entity_table import Column, ttl_text
from collectors.events import Lock, Mark, Node, RawKey, Session, Transaction

STATUS_STYLE = {
    "up": "green",
    "down": "bold red",
    "lost": "bold red",
    "suspended": "yellow",
    "abandoned": "yellow",
    "connecting": "yellow",
    "running": "yellow",
    "held": "bold green",
    "violated": "bold red",
    "error": "bold red",
    "stopped": "yellow",
    "live": "green",
    "expired": "yellow",
    "deleted": "yellow",
}


def clock(ms: int | None) -> str:
    if not ms:
        return "–"
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def status(text: str) -> Text:
    return safe(text, STATUS_STYLE.get(text, ""))


def _waiters(lock: Lock) -> Text:
    if not lock.waiters:
        return safe("–", "dim")
    parts = []
    for w in lock.waiters:
        if w.polls is not None:
            parts.append(f"{w.id}({w.polls})")
        else:
            parts.append(w.id)
    return safe(" ".join(parts), limit=40)


def _grants(lock: Lock) -> Text:
    if lock.store != "redis" or not lock.grants:
        return safe(",".join(lock.nodes))
    out = Text(no_wrap=True, overflow="ellipsis")
    for g in lock.grants:
        mine = g.token == lock.token
        out.append_text(safe(g.node, "bold green" if mine else "bold red"))
        out.append("■ " if mine else "□ ", style="green" if mine else "red")
        for r in g.replicas:
            ok = r.present and r.same_value
            out.append_text(safe(f"{r.node}{'✓' if ok else '✗'} ", "green" if ok else "yellow"))
    return out


HOLDER_LIMIT = 24
"""Enough to tell tokens apart; enter shows a lock's holder in full."""


def _holder(lock: Lock) -> Text:
    if not lock.holder:
        return safe("free", "dim")
    if lock.split:
        # grants that name different holders, none on a majority: the failure itself
        return safe(" ≠ ".join(lock.holders), "bold red", limit=HOLDER_LIMIT + 10)
    if len(lock.holders) > 1 and lock.store == "zookeeper":
        return safe(", ".join(lock.holders), "bold", limit=HOLDER_LIMIT + 10)  # readers sharing
    text = safe(lock.holder, "bold", limit=HOLDER_LIMIT)
    if len(lock.holders) > 1:
        # a minority of grants names someone else (a RedLock contender mid-attempt)
        text.append_text(safe(f" +{len(lock.holders) - 1} minority", "dim"))
    return text


def _fence(lock: Lock) -> Text:
    if lock.fence is not None:
        return safe(f"#{lock.fence}")
    if not lock.token or lock.token == lock.holder:
        return safe("–", "dim")  # a bare token is the holder: it is in that column already
    return safe(lock.token, limit=11)


LOCKS = [
    Column("name", "lock", lambda lk: safe(lk.name, "dim italic" if lk.stale else "", limit=26)),
    Column("holder", "holder", _holder),
    Column("ttl", "TTL", lambda lk: ttl_text(lk.expires_at_ms, lk.ttl_ms), ticking=True),
    Column("fence", "fence/token", _fence),
    # fixed widths: a DataTable column only ever grows, so one RedLock run would push
    # every later column off the screen for good
    Column("grants", "where", _grants, width=22),
    Column("waiters", "waiters", _waiters, width=16),
    Column("layout", "layout", lambda lk: safe(lk.layout)),
]


def _attrs(s: Session) -> Text:
    return safe(" ".join(f"{k}={v}" for k, v in s.attributes.items()), limit=40)


SESSIONS = [
    Column("id", "session", lambda s: safe(s.session_id, limit=24)),
    Column("layout", "layout", lambda s: safe(s.layout)),
    Column("user", "user", lambda s: safe(s.user or "–")),
    Column("state", "state", lambda s: status(s.state)),
    Column("ttl", "idle TTL", lambda s: ttl_text(s.expires_at_ms, s.ttl_ms), ticking=True),
    Column("last", "last access", lambda s: safe(clock(s.last_access_ms))),
    Column("attrs", "attributes", _attrs),
]

MARKS = [
    Column("key", "mark", lambda m: safe(m.key, limit=40)),
    Column("state", "state", lambda m: safe(m.state, "bold")),
    Column("owner", "owner", lambda m: safe(m.owner or "–")),
    Column("ttl", "TTL", lambda m: ttl_text(m.expires_at_ms, m.ttl_ms), ticking=True),
    Column("detail", "detail", lambda m: safe(" ".join(f"{k}={v}" for k, v in m.detail.items()), limit=40)),
]

TRANSACTIONS = [
    Column("id", "transaction", lambda t: safe(t.id, limit=30)),
    Column("protocol", "protocol", lambda t: safe(t.protocol)),
    Column("state", "state", lambda t: safe(t.state, "bold")),
    Column(
        "branches", "branches", lambda t: safe(" ".join(f"{b.id}:{b.state}" for b in t.branches), limit=50)
    ),
]


def _as_of(n: Node) -> Text:
    if n.status == "up":
        return safe("now", "dim")
    return safe(f"as of {clock(n.as_of_ms)}", "yellow")


NODES = [
    Column("id", "node", lambda n: safe(n.id, "bold")),
    Column("address", "address", lambda n: safe(n.address)),
    Column("role", "role", lambda n: safe(f"{n.role} of {n.master}" if n.master else n.role)),
    Column("status", "status", lambda n: status(n.status)),
    Column("asof", "data", _as_of),
    Column("keys", "keys", lambda n: safe(str(n.keys))),
    Column("events", "events", lambda n: safe(f"{n.events} (~{n.coalesced})")),
    Column("gaps", "gaps", lambda n: safe(str(n.gaps), "yellow" if n.gaps else "dim")),
    Column("feed", "feed", lambda n: safe(n.feed, limit=44)),
]

KEYS = [
    Column("key", "key / znode", lambda k: safe(k.key, limit=36)),
    Column("node", "node", lambda k: safe(k.node)),
    Column("type", "type", lambda k: safe(k.type)),
    Column("ttl", "TTL", lambda k: ttl_text(None, k.ttl_ms)),
    Column("size", "size", lambda k: safe(str(k.size))),
    Column("preview", "preview", lambda k: safe(k.preview, "dim", limit=40)),
]

__all__ = [
    "KEYS",
    "LOCKS",
    "MARKS",
    "NODES",
    "SESSIONS",
    "TRANSACTIONS",
    "Lock",
    "Mark",
    "Node",
    "RawKey",
    "Session",
    "Transaction",
]
