"""Idempotency marks: a request id and how far its request got.

A mark is claimed IN_PROGRESS by the instance that runs the request (with a
lease: a claim whose lease ran out may be taken over), then COMPLETED with
the stored response, which a duplicate gets replayed; when the key's TTL
ends, the same id counts as a new request. Marks look like locks (a small
value set NX with a TTL), which is why their recognisers are asked first.

The state a mark shows is what the store holds, except that an IN_PROGRESS
mark whose lease has ended is shown STALE (its owner died or is too slow:
the next duplicate takes it over); the family rebuilds it when the lease
ends, so no event is needed for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from collectors.families.base import (
    MARKS,
    Cell,
    Column,
    Family,
    Member,
    Recogniser,
    countdown,
    own,
    pieces,
    prefer_master,
    status,
    text,
)
from collectors.families.nodes import keyspace
from collectors.layouts import LayoutConfig, coordscope, idempotency
from collectors.layouts.facts import MarkFact
from collectors.records import KeyRecord, Store


@dataclass(frozen=True)
class Mark:
    KIND: ClassVar[str] = "mark"
    id: str
    store: Store
    layout: str
    key: str
    state: str
    """IN_PROGRESS | COMPLETED | STALE (in progress, lease over) | EXPIRED | FAILED."""
    owner: str | None = None
    ttl_ms: int | None = None
    expires_at_ms: int | None = None
    lease_expires_at_ms: int | None = None
    """When an in-progress claim may be taken over (wall clock)."""
    response: str | None = None
    """The stored response: a code, or the start of the body."""
    fingerprint: str | None = None
    detail: dict[str, str] = field(default_factory=dict)
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def name(mark: Mark) -> str:
    """How a mark is called on screen: a scenario's mark by its request id (the run is
    in its key), anyone else's by its key."""
    if mark.layout == coordscope.LAYOUT:
        return mark.key.removeprefix(coordscope.mark_key("")).rpartition(":")[2] or mark.key
    return mark.key


def _name_cell(m: Mark) -> Cell:
    short = name(m)
    if short == m.key:
        return text(m.key, "dim" if m.stale else "", title=m.key)
    run = m.key.removeprefix(coordscope.mark_key("")).rpartition(":")[0]
    return pieces((short, "dim" if m.stale else "bold"), (run, "dim"), title=m.key)


def _response(m: Mark) -> Cell:
    body = m.detail.get("body", "")
    return pieces(m.response or "–", (body, "dim"), title=body or (m.response or ""))


def _libraries(rec: KeyRecord, config: LayoutConfig) -> Any:
    """Powertools, @node-idempotency, the generic rule and the user's patterns; and the
    helper keys of those libraries, which are not marks and never held locks."""
    return idempotency.recognise(rec, config.mark_patterns) or idempotency.auxiliary(rec)


class Marks(Family):
    kind = "mark"
    plural = "marks"
    title = "Idempotency marks"
    entity = Mark
    facts = (MarkFact,)
    recognisers = (own(coordscope.recognise_mark), Recogniser(MARKS, _libraries))
    sort = "key"
    empty = "no marks"
    columns = (
        Column("key", "mark", _name_cell, limit=34),
        Column("state", "state", lambda m: status(m.state)),
        Column("owner", "owner", lambda m: text(m.owner), limit=14),
        Column(
            "lease",
            "lease",
            lambda m: countdown(m.lease_expires_at_ms) if m.state == "IN_PROGRESS" else text(None),
        ),
        Column("ttl", "TTL", lambda m: countdown(m.expires_at_ms, m.ttl_ms)),
        Column("response", "response", _response, limit=16),
        Column(
            "fingerprint",
            "fingerprint",
            lambda m: text(m.fingerprint, "dim", title=m.fingerprint or ""),
            limit=10,
        ),
        Column("layout", "layout", lambda m: text(m.layout)),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{keyspace(self.view, node_id)}:{rec.key}"

    def build(self, entity_id: str, members: list[Member]) -> Mark | None:
        found = prefer_master(self.view, members, MarkFact)
        if found is None:
            return None
        node_id, rec, fact = found
        state = fact.state
        if state == "IN_PROGRESS" and fact.lease_until_ms is not None:
            if self.view.now() >= fact.lease_until_ms:
                state = "STALE"
            else:
                self.view.recheck((self.kind, entity_id), fact.lease_until_ms)
        expires = rec.expires_at_ms
        if fact.expires_at_ms is not None and (expires is None or fact.expires_at_ms < expires):
            expires = fact.expires_at_ms
        return Mark(
            id=entity_id,
            store="redis",
            layout=fact.layout,
            key=rec.key,
            state=state,
            owner=fact.owner,
            ttl_ms=rec.ttl_ms,
            expires_at_ms=expires,
            lease_expires_at_ms=fact.lease_until_ms,
            response=fact.response,
            fingerprint=fact.fingerprint,
            detail=dict(fact.detail),
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self.view.stale(n for n, _ in members),
        )

    def narrate(self, old: Mark | None, new: Mark | None, cause: str) -> None:
        log = self.view.log
        if new is not None and (old is None or old.state != new.state or old.owner != new.owner):
            who = f" by {new.owner}" if new.owner else ""
            mark = f"mark {name(new)}"
            if old is not None and old.owner and new.owner and old.owner != new.owner:
                line = f"{mark}: taken over by {new.owner} from {old.owner} ({old.state})"
            elif new.state == "COMPLETED":
                line = f"{mark}: completed{who}" + (f" ({new.response})" if new.response else "")
            elif new.state == "STALE":
                line = f"{mark}: lease of {new.owner or '?'} ended while in progress"
            else:
                line = f"{mark}: {new.state.lower().replace('_', ' ')}{who}"
            log("warn" if new.state in ("STALE", "FAILED") else "info", new.node, line)
        elif new is None and old is not None and cause in ("expired", "evicted"):
            # a mark deleted on purpose (a run's cleanup) is no news; one that expired is:
            # the same id now counts as a new request
            log("info", old.node, f"mark {name(old)}: {cause} ({old.state}): the same id now counts as new")
