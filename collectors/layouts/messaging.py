"""The messages of coordscope's messaging scenarios, as their brokers and notifiers keep them.

Eventual consistency through messages (the seed's last three remedies) leaves work in
flight in the stores: a half message waiting for its producer's word, a notification on
its backoff ladder, an outbox row not yet published. Names are built here and nowhere
else; the scenarios import the builders, the recogniser below parses. Every name carries
its run in a hash tag (``{<run>}``), so a run's keys share a Redis Cluster slot and one
script may touch several of them.

Redis
    ``coordscope:rmq:{<run>}:msg:<id>``   hash  a transactional (half) message as the broker
                                            keeps it: ``state`` (HALF, COMMITTED, ROLLED_BACK,
                                            DISCARDED), ``topic``, ``producer``, ``body``,
                                            ``checks`` (check-backs made), ``max_checks``,
                                            ``half_ms`` (stored), ``next_check_ms`` (while
                                            HALF), ``decided_ms``, ``last_answer`` (the
                                            producer's last word: COMMIT, ROLLBACK, UNKNOWN,
                                            or why there was none)
    ``coordscope:rmq:{<run>}:half``       zset  the broker's check schedule: message id
                                            scored by its next check (ms)
    ``coordscope:rmq:{<run>}:topic:<topic>``  stream  committed messages, delivered to
                                            consumer groups
    ``coordscope:rmq:{<run>}:done:<id>``  string  a consumer's dedup mark: the message applied,
                                            by the consumer it names (an idempotency mark)
    ``coordscope:notify:{<run>}:n:<id>``  hash  a notification as its notifier keeps it:
                                            ``state`` (NOTIFYING, ACKED, GAVE_UP, RECONCILED),
                                            ``attempt`` (tries made), ``attempts`` (the
                                            ladder's length), ``next_at_ms`` (while
                                            NOTIFYING), ``ladder`` (comma-separated ms),
                                            ``target``, ``last`` (the last try's outcome),
                                            ``created_ms``, ``done_ms``
    ``coordscope:notify:{<run>}:due``     zset  the notifier's schedule: id scored by next_at_ms
    ``coordscope:notify:{<run>}:queue``   stream  A's notifications, waiting for the notifier
    ``coordscope:outbox:{<run>}:events``  stream  the outbox relay's topic (consumer group ``b``)

PostgreSQL
    an outbox is any table named like ``outbox`` with a creation time and a sent marker
    (:mod:`collectors.layouts.postgres_outbox`); the outbox scenario's own is
    ``<schema>.outbox(id, aggregatetype, aggregateid, type, payload, created_at,
    sent_at)`` — Debezium's outbox columns, plus ``sent_at`` for a polling relay.
"""

from __future__ import annotations

from collectors.layouts.coordscope import PREFIX
from collectors.layouts.facts import AuxiliaryFact, Fact, MarkFact, MessageFact
from collectors.records import KeyRecord, display

HALF = "HALF"
COMMITTED = "COMMITTED"
ROLLED_BACK = "ROLLED_BACK"
DISCARDED = "DISCARDED"
HALF_STATES = (HALF, COMMITTED, ROLLED_BACK, DISCARDED)

NOTIFYING = "NOTIFYING"
ACKED = "ACKED"
GAVE_UP = "GAVE_UP"
RECONCILED = "RECONCILED"
NOTIFICATION_STATES = (NOTIFYING, ACKED, GAVE_UP, RECONCILED)

HALF_KIND = "half message"
NOTIFICATION_KIND = "notification"


def rmq_prefix(run: str) -> str:
    """Every key of a reliable-message run (for its cleanup)."""
    return f"{PREFIX}rmq:{{{run}}}:"


def half_key(run: str, msg_id: str) -> str:
    return f"{rmq_prefix(run)}msg:{msg_id}"


def half_schedule_key(run: str) -> str:
    return f"{rmq_prefix(run)}half"


def topic_key(run: str, topic: str) -> str:
    return f"{rmq_prefix(run)}topic:{topic}"


def done_key(run: str, msg_id: str) -> str:
    return f"{rmq_prefix(run)}done:{msg_id}"


def notify_prefix(run: str) -> str:
    """Every key of a best-effort run (for its cleanup)."""
    return f"{PREFIX}notify:{{{run}}}:"


def notification_key(run: str, notification_id: str) -> str:
    return f"{notify_prefix(run)}n:{notification_id}"


def due_key(run: str) -> str:
    return f"{notify_prefix(run)}due"


def notify_queue_key(run: str) -> str:
    return f"{notify_prefix(run)}queue"


def outbox_prefix(run: str) -> str:
    return f"{PREFIX}outbox:{{{run}}}:"


def outbox_stream_key(run: str) -> str:
    return f"{outbox_prefix(run)}events"


def _parse(key: str) -> tuple[str, str, str, str] | None:
    """(area, run, kind, rest) of ``coordscope:<area>:{<run>}:<kind>[:<rest>]``."""
    if not key.startswith(PREFIX):
        return None
    area, _, tail = key[len(PREFIX) :].partition(":")
    if area not in ("rmq", "notify") or not tail.startswith("{"):
        return None
    run, closed, tail = tail[1:].partition("}:")
    kind, _, rest = tail.partition(":")
    if not closed or not run or not kind:
        return None
    return area, run, kind, rest


def _ms(fields: dict[str, str], name: str) -> int | None:
    raw = fields.get(name, "")
    return int(raw) if raw.isdigit() else None


def _count(fields: dict[str, str], name: str) -> int:
    raw = fields.get(name, "")
    return int(raw) if raw.isdigit() else 0


SCHEDULES = {
    ("rmq", "half"): "broker's check schedule",
    ("notify", "due"): "notifier's schedule",
}
"""A scheduler's ZSET (each id scored by when it is due): a raw key, said what it is."""


def recognise(rec: KeyRecord) -> Fact | None:
    """A half message's or a notification's hash (whatever its fields hold: untrusted); a
    consumer's dedup mark (an idempotency mark: the message was applied, by whom); the
    schedules, named as what they are."""
    parsed = _parse(rec.key)
    if parsed is None:
        return None
    area, run, kind, rest = parsed
    if rec.type == "zset" and not rest and (area, kind) in SCHEDULES:
        return AuxiliaryFact(library="coordscope", role=SCHEDULES[(area, kind)])
    if not rest:
        return None
    if area == "rmq" and kind == "done" and rec.type == "string":
        by = display(rec.value or b"")[:80]
        return MarkFact(layout="coordscope", state="COMPLETED", owner=by or None, detail={"run": run})
    if rec.type != "hash":
        return None
    f = {display(k): display(v) for k, v in rec.fields.items()}
    state = f.get("state") or "?"
    if area == "rmq" and kind == "msg":
        return MessageFact(
            msg_id=rest,
            run=run,
            kind=HALF_KIND,
            state=state,
            tries=_count(f, "checks"),
            max_tries=_count(f, "max_checks"),
            next_ms=_ms(f, "next_check_ms") if state == HALF else None,
            since_ms=_ms(f, "half_ms"),
            done_ms=_ms(f, "decided_ms"),
            last=f.get("last_answer", ""),
            detail=f"topic {f.get('topic') or '?'}, from {f.get('producer') or '?'}",
        )
    if area == "notify" and kind == "n":
        return MessageFact(
            msg_id=rest,
            run=run,
            kind=NOTIFICATION_KIND,
            state=state,
            tries=_count(f, "attempt"),
            max_tries=_count(f, "attempts"),
            next_ms=_ms(f, "next_at_ms") if state == NOTIFYING else None,
            since_ms=_ms(f, "created_ms"),
            done_ms=_ms(f, "done_ms"),
            last=f.get("last", ""),
            detail=f"to {f.get('target') or '?'}, ladder {f.get('ladder') or '?'} ms",
        )
    return None
