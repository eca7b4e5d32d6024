"""Messages in flight: half messages waiting for their producer's word, notifications on
their backoff ladder.

A transactional (half) message is stored by its broker but not delivered until its
producer commits it; while the producer is silent the broker checks back, up to a
limit, then discards it (RocketMQ's ``transactionCheckMax``). A best-effort
notification is sent again and again on a ladder of growing delays until its receiver
acknowledges it, or the notifier gives up and the receiver has to reconcile. Both are
work in doubt that the usual dashboards do not show (rocketmq-dashboard#4343): here
each is a row with its check or attempt count and the time left until the next one,
counting down on the screens. An overdue one (its broker or notifier is down or
behind) shows *due now*: the family rebuilds it when its time comes, no event needed.

The layouts are coordscope's own (:mod:`collectors.layouts.messaging`); the outbox's
backlog is a queue (:mod:`collectors.families.queues`), stream pending entries too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import (
    Cell,
    Column,
    Family,
    Member,
    age,
    countdown,
    own,
    pieces,
    prefer_master,
    status,
    text,
)
from collectors.families.nodes import keyspace
from collectors.layouts import messaging
from collectors.layouts.facts import MessageFact
from collectors.records import KeyRecord

FINAL_NEWS = {
    messaging.DISCARDED: "warn",
    messaging.GAVE_UP: "warn",
    messaging.RECONCILED: "info",
}
"""The states worth a line in the event log (one per message, not one per step: a run
moves hundreds of messages)."""


@dataclass(frozen=True)
class Message:
    KIND: ClassVar[str] = "message"
    id: str
    msg_id: str
    run: str
    kind: str
    """``half message`` or ``notification``."""
    state: str
    key: str = ""
    tries: int = 0
    max_tries: int = 0
    next_ms: int | None = None
    since_ms: int | None = None
    done_ms: int | None = None
    last: str = ""
    detail: str = ""
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def _tries(m: Message) -> Cell:
    what = "check" if m.kind == messaging.HALF_KIND else "attempt"
    of = f"/{m.max_tries}" if m.max_tries else ""
    tone = "warn" if m.max_tries and m.tries >= m.max_tries - 1 and m.next_ms is not None else ""
    return pieces((f"{what} {m.tries}{of}", tone))


def _next(m: Message, now_ms: int) -> Cell:
    if m.next_ms is None:
        return text(None)
    if m.next_ms <= now_ms:
        return pieces(
            ("due now", "warn"),
            title="its time has come: a check or attempt in flight, or the broker or notifier down or late",
        )
    return countdown(m.next_ms)


class Messages(Family):
    kind = "message"
    plural = "messages"
    title = "Messages in flight (half messages, notifications)"
    entity = Message
    facts = (MessageFact,)
    recognisers = (own(messaging.recognise),)
    sort = "message"
    empty = "no half messages or notifications"
    columns = (
        Column(
            "message",
            "message",
            lambda m: pieces((m.msg_id, "dim" if m.stale else "bold"), (m.run, "dim"), title=m.key),
            limit=28,
        ),
        Column("kind", "kind", lambda m: text(m.kind)),
        Column("state", "state", lambda m: status(m.state)),
        Column("tries", "checks / attempts", _tries),
        Column("next", "next in", lambda m: _next(m, m.as_of_ms)),
        Column("age", "age", lambda m: age(m.since_ms)),
        Column("last", "last answer", lambda m: text(m.last or None, title=m.last), limit=24),
        Column("detail", "detail", lambda m: text(m.detail, title=m.detail), limit=48),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"redis:{keyspace(self.view, node_id)}:{rec.key}"

    def build(self, entity_id: str, members: list[Member]) -> Message | None:
        found = prefer_master(self.view, members, MessageFact)
        if found is None:
            return None
        node_id, rec, fact = found
        now = self.view.now()
        if fact.next_ms is not None and fact.next_ms > now:
            self.view.recheck((self.kind, entity_id), fact.next_ms)  # to show it due
        return Message(
            id=entity_id,
            msg_id=fact.msg_id,
            run=fact.run,
            kind=fact.kind,
            state=fact.state,
            key=rec.key,
            tries=fact.tries,
            max_tries=fact.max_tries,
            next_ms=fact.next_ms,
            since_ms=fact.since_ms,
            done_ms=fact.done_ms,
            last=fact.last,
            detail=fact.detail,
            node=node_id,
            # the "next in" cell tells a countdown from an overdue one by the build's time
            as_of_ms=max(rec.read_at_ms, now),
            stale=self.view.stale(n for n, _ in members),
        )

    def narrate(self, old: Message | None, new: Message | None, cause: str) -> None:
        if new is None or (old is not None and old.state == new.state) or new.state not in FINAL_NEWS:
            return
        what = "checks" if new.kind == messaging.HALF_KIND else "attempts"
        last = f" (last: {new.last})" if new.last else ""
        self.view.log(
            FINAL_NEWS[new.state],
            new.node,
            f"{new.kind} {new.msg_id} of run {new.run}: {new.state} after {new.tries} {what}{last}",
        )
