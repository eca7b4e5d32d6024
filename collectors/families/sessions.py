"""Sessions: a web login kept in Redis, shared by every app instance.

Joining: a Spring Session hash (``<ns>:sessions:<id>``) and its
``<ns>:sessions:expires:<id>`` shadow are one session — live while the
shadow exists (its TTL is the idle timeout), expired or deleted once only
the hash is left (its 5-minute grace). A connect-redis ``sess:<id>`` JSON
string is a session on its own, and so is a Flask-Session, starsessions, by-name
or by-pattern key (:mod:`collectors.layouts.session_stores`): each is gone when its
key is deleted or expires. A replica's copy is the master's session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from collectors.families.base import (
    SESSIONS,
    Column,
    Family,
    Member,
    Recogniser,
    countdown,
    prefer_master,
    status,
    text,
)
from collectors.families.nodes import clock, keyspace
from collectors.layouts import LayoutConfig, session_stores, sessions
from collectors.layouts.facts import SessionFact, SessionShadowFact
from collectors.layouts.session_stores import SERVED_BY_ATTRIBUTES, served_by_of
from collectors.records import KeyRecord, Store


@dataclass(frozen=True)
class Session:
    KIND: ClassVar[str] = "session"
    id: str
    store: Store
    layout: str
    key: str
    session_id: str
    user: str | None = None
    ttl_ms: int | None = None
    expires_at_ms: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    created_ms: int | None = None
    last_access_ms: int | None = None
    max_inactive_s: int | None = None
    encoding: str = ""
    served_by: str | None = None
    """The instance that served the session's last request, where the app records it."""
    state: str = "live"
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def _short(name: str) -> str:
    """A Java constant's name without its class (a Spring app's attribute names)."""
    return name.rsplit(".", 1)[-1] if name.startswith(("org.", "com.", "java.")) else name


def _attributes(s: Session) -> Any:
    # the serving instance has its own column
    every = " ".join(f"{k}={v}" for k, v in s.attributes.items())
    shown = {k: v for k, v in s.attributes.items() if k not in SERVED_BY_ATTRIBUTES}
    if shown:
        return text(" ".join(f"{_short(k)}={v}" for k, v in shown.items()), title=every)
    if not s.attributes and "bytes" in s.encoding:  # unreadable by design (a container's blob)
        return text(f"‹{s.encoding}›", "dim")
    return text(None, title=every)


def _due(fact: SessionFact) -> int:
    """When a Spring session expires by its own fields (0 when they do not say)."""
    if fact.last_access_ms is None or not fact.max_inactive_s:
        return 0
    return fact.last_access_ms + fact.max_inactive_s * 1000


def _recognise(rec: KeyRecord, config: LayoutConfig) -> Any:
    return sessions.recognise(rec, config.session_patterns) or session_stores.recognise(
        rec, config.session_patterns, config.lock_patterns
    )


class Sessions(Family):
    kind = "session"
    plural = "sessions"
    title = "Sessions"
    entity = Session
    facts = (SessionFact, SessionShadowFact)
    recognisers = (Recogniser(SESSIONS, _recognise),)
    sort = "id"
    empty = "no sessions"
    columns = (
        Column("id", "session", lambda s: text(s.session_id, title=s.key), limit=24),
        Column("layout", "layout", lambda s: text(s.layout)),
        Column("user", "user", lambda s: text(s.user)),
        Column("state", "state", lambda s: status(s.state)),
        Column("served", "served by", lambda s: text(s.served_by)),
        Column("ttl", "idle TTL", lambda s: countdown(s.expires_at_ms, s.ttl_ms)),
        Column("last", "last access", lambda s: text(clock(s.last_access_ms))),
        Column("attrs", "attributes", _attributes, limit=40),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{keyspace(self.view, node_id)}:{fact.group}:{fact.session_id}"

    def build(self, entity_id: str, members: list[Member]) -> Session | None:
        found = prefer_master(self.view, members, SessionFact)
        if found is None:
            return None
        node_id, rec, fact = found
        shadow = prefer_master(self.view, members, SessionShadowFact)
        ttl, expires, state = rec.ttl_ms, rec.expires_at_ms, "live"
        if fact.layout == "spring-session":
            if shadow is not None:
                ttl, expires = shadow[1].ttl_ms, shadow[1].expires_at_ms
            elif fact.max_inactive_s == 0:
                state, ttl, expires = "deleted", None, None  # the hash's TTL is its grace, not idle
            elif _due(fact) > self.view.now():
                # the hash is written first, its shadow a moment later (and with notifications
                # off, found later still): by its own fields the session is live until then
                expires = _due(fact)
                ttl = expires - self.view.now()
                self.view.recheck((self.kind, entity_id), expires)
            else:
                state, ttl, expires = "expired", None, None
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
            encoding=fact.encoding,
            served_by=served_by_of(fact.attributes),
            state=state,
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self.view.stale(n for n, _ in members),
        )

    def narrate(self, old: Session | None, new: Session | None, cause: str) -> None:
        log = self.view.log
        if old is None and new is not None:
            log("info", new.node, f"session {new.session_id} created ({new.layout}, user {new.user or '?'})")
        elif new is None and old is not None:
            log("info", old.node, f"session {old.session_id} {cause or 'removed'}")
        elif old is not None and new is not None and old.state != new.state:
            log("info", new.node, f"session {new.session_id} is now {new.state}")
