"""Queues: Redis streams and lists that carry work, and the jobs of task-queue libraries.

Joining: a stream with consumer groups, or a list named like a queue, is a
queue on its own. An RQ queue is its ``rq:queue:<q>`` list (gone while empty)
plus every key of RQ's that names it: its registries (job ids by status),
its jobs' hashes (by their ``origin``), its workers. RQ's bookkeeping that
names no queue (``rq:queues``, ``rq:workers``, results, executions) joins an
entity that is never shown: those keys are neither raw keys nor locks.

An outbox table (:mod:`collectors.layouts.postgres_outbox`) is a queue kept in
PostgreSQL: its length is the rows not sent yet, its oldest pending the oldest of
those, counting up on the screens — while a relay or its broker is down, the backlog
and its age grow. It is polled with the rest of its server.

Pending entries: a delivery (``XREADGROUP``) and an acknowledgement
(``XACK``) send no keyspace notification, so the Redis collector re-reads
the groups of every stream that has some every
:data:`collectors.redis_streams.REFRESH_EVERY_S` (see there); the panel's
title says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from collectors.families.base import (
    LOCKS,
    OWN,
    Cell,
    Column,
    Family,
    Line,
    Member,
    Recogniser,
    age,
    fmt_ms,
    middle,
    own,
    pieces,
    prefer_master,
    text,
)
from collectors.families.nodes import clock, keyspace
from collectors.layouts import LayoutConfig, postgres_outbox, queues, rq
from collectors.layouts.facts import Job, JobFact, OutboxFact, QueueFact, QueuePartFact
from collectors.records import KeyRecord, Store, StreamGroup, display
from collectors.redis_streams import REFRESH_EVERY_S

JOBS_SHOWN = 50
STATUS_ORDER = ("queued", "started", "finished", "failed", "deferred", "scheduled", "canceled", "stopped")
JOB_TONE = {"queued": "accent", "started": "warn", "finished": "good", "failed": "bad"}


@dataclass(frozen=True)
class Queue:
    KIND: ClassVar[str] = "queue"
    id: str
    store: Store
    layout: str
    """``rq``, ``stream`` (any client's consumer groups) or ``list``."""
    name: str
    key: str = ""
    type: str = ""
    """``stream`` or ``list`` (its body's type; empty while an RQ queue has none)."""
    length: int = 0
    head: tuple[str, ...] = ()
    """A list's first items (the next to be popped, for LPUSH/RPOP queues the last)."""
    last_id: str | None = None
    """A stream's newest entry."""
    groups: tuple[StreamGroup, ...] = ()
    jobs: dict[str, int] = field(default_factory=dict)
    """A task queue's jobs by status (its registries' sizes; queued: the list's length)."""
    job_list: tuple[Job, ...] = ()
    """The jobs whose hashes are read, newest first (at most ``JOBS_SHOWN``)."""
    workers: tuple[str, ...] = ()
    """A task queue's workers, ``name (state)``."""
    sent: int = 0
    """An outbox's rows already sent (kept in the table)."""
    oldest_ms: int | None = None
    """An outbox's oldest row not sent yet: when it was written."""
    marker: str = ""
    """How an outbox marks a row sent (``sent_at IS NULL``: waiting)."""
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False

    @property
    def pending(self) -> int:
        return sum(g.pending for g in self.groups)


def _recognise_rq(rec: KeyRecord, config: LayoutConfig) -> Any:
    return rq.recognise(rec)


def _recognise_shape(rec: KeyRecord, config: LayoutConfig) -> Any:
    return queues.recognise(rec, config.queue_patterns)


class Queues(Family):
    kind = "queue"
    plural = "queues"
    title = f"Queues (stream groups re-read every {REFRESH_EVERY_S:g}s: XREADGROUP/XACK send no event)"
    entity = Queue
    facts = (QueueFact, JobFact, QueuePartFact, OutboxFact)
    recognisers = (
        own(postgres_outbox.recognise),
        Recogniser(OWN + 5, _recognise_rq),  # before marks: an RQ job hash has a status field
        Recogniser(LOCKS - 5, _recognise_shape),
    )
    sort = "name"
    empty = "no queues (streams with consumer groups, lists named like a queue, RQ, outbox tables)"
    columns = (
        Column("name", "queue", lambda q: text(middle(q.name, 28), title=q.key or q.name), limit=28),
        Column("layout", "layout", lambda q: text(q.layout)),
        Column("length", "length", lambda q: text(q.length)),
        Column("work", "groups / jobs", lambda q: _work(q), limit=60),
        Column("pending", "oldest pending", lambda q: _oldest(q), limit=30),
        Column("head", "head / last id", lambda q: _head(q), limit=36),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        if isinstance(fact, OutboxFact):
            return f"postgres:{node_id}:{fact.queue}"
        return f"redis:{keyspace(self.view, node_id)}:{fact.layout}:{fact.queue}"

    def build(self, entity_id: str, members: list[Member]) -> Queue | None:
        view = self.view
        if entity_id.startswith("postgres:"):
            return self._outbox(entity_id, members)
        body = prefer_master(view, members, QueueFact)
        parts: list[tuple[KeyRecord, Any]] = []
        for node_id, key in sorted(members):
            if view.is_replica(node_id) and not view.down(view.group(node_id)):
                continue  # a replica's copy stands in only while its master is down
            seen, fact = view.observation((node_id, key))
            if isinstance(seen, KeyRecord) and isinstance(fact, (JobFact, QueuePartFact)):
                parts.append((seen, fact))
        facts = [f for _, f in parts]
        if body is None and not any(isinstance(f, JobFact) or f.role == "registry" for f in facts):
            return None  # bookkeeping of no queue (or a queue with nothing in it left)
        node_id = body[0] if body else members[0][0]
        layout = body[2].layout if body else facts[0].layout
        name = body[2].queue if body else facts[0].queue
        rec: KeyRecord | None = body[1] if body else None
        jobs: dict[str, int] = {}
        if layout == "rq":
            jobs["queued"] = rec.size if rec else 0
            for r, f in parts:
                if isinstance(f, QueuePartFact) and f.role == "registry":
                    jobs[f.status] = jobs.get(f.status, 0) + r.size
        job_list = sorted(
            (f.job for f in facts if isinstance(f, JobFact)), key=lambda j: j.enqueued, reverse=True
        )[:JOBS_SHOWN]
        return Queue(
            id=entity_id,
            store="redis",
            layout=layout,
            name=name,
            key=rec.key if rec else "",
            type=rec.type if rec else "",
            length=rec.size if rec else 0,
            head=tuple(display(i[:80]) for i in rec.items[:4]) if rec and rec.type == "list" else (),
            last_id=display(rec.entries[-1][0]) if rec and rec.entries else None,
            groups=rec.groups if rec else (),
            jobs={s: jobs[s] for s in sorted(jobs, key=_status_rank)},
            job_list=tuple(job_list),
            workers=tuple(
                sorted(
                    f"{display(r.raw_key).removeprefix('rq:worker:')} ({f.status or '?'})"
                    for r, f in parts
                    if isinstance(f, QueuePartFact) and f.role == "worker"
                )
            ),
            node=view.group(node_id),
            as_of_ms=max([rec.read_at_ms if rec else 0, *(r.read_at_ms for r, _ in parts)]),
            stale=view.stale(n for n, _ in members),
        )

    def _outbox(self, entity_id: str, members: list[Member]) -> Queue | None:
        for node_id, key in members:
            rec, fact = self.view.observation((node_id, key))
            if isinstance(rec, KeyRecord) and isinstance(fact, OutboxFact):
                return Queue(
                    id=entity_id,
                    store="postgres",
                    layout=postgres_outbox.LAYOUT,
                    name=fact.queue,
                    key=f"{fact.database}.{fact.queue}",
                    type="table",
                    length=fact.unsent,
                    sent=fact.total - fact.unsent,
                    oldest_ms=fact.oldest_ms if fact.unsent else None,
                    marker=fact.marker,
                    node=node_id,
                    as_of_ms=rec.read_at_ms,
                    stale=self.view.stale([node_id]),
                )
        return None

    def narrate(self, old: Queue | None, new: Queue | None, cause: str) -> None:
        log = self.view.log
        if old is None and new is not None:
            log("info", new.node, f"queue {new.name} ({new.layout}) seen")
        elif new is None and old is not None:
            log("info", old.node, f"queue {old.name} {cause or 'removed'}")
        elif old is not None and new is not None:
            for job in new.job_list:
                before = next((j for j in old.job_list if j.id == job.id), None)
                if before is not None and before.status != job.status:
                    log("info", new.node, f"job {job.id} on {new.name}: {before.status} -> {job.status}")

    @classmethod
    def detail(cls, entity: Any) -> tuple[Line, ...]:
        q: Queue = entity
        lines: list[Line] = [
            (text("queue", "dim"), text(f"{q.name} ({q.layout}, {q.type or 'empty'}) on {q.node}")),
            (text("length", "dim"), text(q.length)),
        ]
        if q.layout == postgres_outbox.LAYOUT:
            waits = fmt_ms(q.as_of_ms - q.oldest_ms) if q.oldest_ms is not None else "–"
            lines += [
                (text("waiting", "dim"), text(f"{q.length} rows ({q.marker}); the oldest for {waits}")),
                (text("sent", "dim"), text(q.sent if q.marker != "deleted once sent" else "deleted")),
                (text("refresh", "dim"), text(f"read from {q.key} at {clock(q.as_of_ms)} (polled)")),
            ]
        if q.head:
            lines.append((text("head", "dim"), text(" | ".join(q.head))))
        if q.last_id:
            lines.append((text("last id", "dim"), text(q.last_id)))
        for g in q.groups:
            lag = "?" if g.lag is None else g.lag
            lines.append(
                (
                    text(f"group {g.name}", "bold"),
                    text(f"pending {g.pending} · lag {lag} · last delivered {g.last_delivered}"),
                )
            )
            if g.oldest_pending:
                idle = fmt_ms(q.as_of_ms - (g.oldest_since_ms or q.as_of_ms))
                lines.append(
                    (
                        text("  oldest pending", "dim"),
                        text(
                            f"{g.oldest_pending}, idle {idle} at {clock(q.as_of_ms)}, "
                            f"delivered {g.oldest_deliveries}×"
                        ),
                    )
                )
            for c in g.consumers:
                idle = fmt_ms(q.as_of_ms - c.idle_since_ms)
                lines.append(
                    (text(f"  consumer {c.name}", "dim"), text(f"pending {c.pending} · idle {idle}"))
                )
        if q.groups:
            lines.append(
                (
                    text("refresh", "dim"),
                    text(
                        f"groups re-read every {REFRESH_EVERY_S:g}s "
                        f"(XREADGROUP/XACK send no keyspace event); as of {clock(q.as_of_ms)}"
                    ),
                )
            )
        if q.jobs:
            lines.append((text("jobs", "dim"), _jobs(q)))
        for w in q.workers:
            lines.append((text("worker", "dim"), text(w)))
        for j in q.job_list:
            lines.append(
                (
                    text(f"job {j.id}", "dim"),
                    pieces((j.status, JOB_TONE.get(j.status, "bold")), j.description, j.worker),
                )
            )
        return tuple(lines)


def _status_rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


def _jobs(q: Queue) -> Cell:
    parts: list[tuple[str, str] | str] = []
    for status, n in q.jobs.items():
        parts.append((f"{status} {n}", JOB_TONE.get(status, "") if n else "dim"))
    return pieces(*parts)


def _work(q: Queue) -> Cell:
    if q.layout == postgres_outbox.LAYOUT:
        return pieces(
            (f"{q.length} unsent", "warn" if q.length else "dim"),
            f"{q.sent} sent" if q.marker != "deleted once sent" else "",
            title=f"waiting: {q.marker}",
        )
    if q.jobs:
        return _jobs(q)
    if q.groups:
        parts: list[tuple[str, str] | str] = []
        for g in q.groups:
            lag = "?" if g.lag is None else str(g.lag)
            parts.append((g.name, "bold"))
            parts.append((f"{g.pending} pending", "warn" if g.pending else "dim"))
            parts.append(f"lag {lag} ·")
            parts.extend((f"{c.name} {c.pending}", "warn" if c.pending else "dim") for c in g.consumers)
        return pieces(*parts, title=f"groups re-read every {REFRESH_EVERY_S:g}s")
    return text(None)


def _oldest(q: Queue) -> Cell:
    if q.layout == postgres_outbox.LAYOUT:
        return age(q.oldest_ms) if q.oldest_ms is not None else text("none" if not q.length else None, "dim")
    since = [g.oldest_since_ms for g in q.groups if g.oldest_since_ms is not None]
    if not since:
        return text("none" if q.groups else None, "dim")
    oldest = min(since)
    return pieces(
        (f"since {clock(oldest)[:8]}", "warn"),
        title=f"idle {fmt_ms(q.as_of_ms - oldest)} at {clock(q.as_of_ms)}",
    )


def _head(q: Queue) -> Cell:
    if q.type == "stream":
        return text(q.last_id)
    return text(" | ".join(q.head), title=" | ".join(q.head))
