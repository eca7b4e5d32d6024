"""RQ (Python's Redis Queue), as rq 3.0 writes it (``rq:`` prefix, fixed by the library).

    ``rq:queue:<q>``                 list    job ids waiting, oldest first (gone when empty)
    ``rq:job:<id>``                  hash    status (queued | started | finished | failed |
                                             deferred | scheduled | stopped | canceled),
                                             origin (its queue), description, worker_name,
                                             enqueued_at, started_at, ended_at, data (a
                                             zlib'd pickle: never read); TTL once ended
                                             (result_ttl, 500 s by default; a failed job's
                                             failure_ttl, a year)
    ``rq:wip:<q>``                   zset    started jobs, ``<job id>:<execution id>``
    ``rq:finished:<q>``, ``rq:failed:<q>``, ``rq:deferred:<q>``, ``rq:scheduled:<q>``,
    ``rq:canceled:<q>``              zset    job ids in that status (score: when they leave)
    ``rq:queues``                    set     every queue's key
    ``rq:workers``, ``rq:workers:<q>`` set   worker keys
    ``rq:worker:<name>``             hash    queues, state (busy | idle...), pid, hostname,
                                             last_heartbeat; TTL a few heartbeats
    ``rq:worker:<name>:executions``  set     what it runs now
    ``rq:execution:<job>:<id>``      hash    one run of a job (worker, heartbeat)
    ``rq:executions:<job>``          zset    a job's runs
    ``rq:results:<job>``             stream  return values and exceptions (pickled)
    ``rq:clean_registries:<q>``, ``rq:clean_groups``  string  "1" with a TTL: maintenance
                                             ran recently (a throttle, not a lock)

All of it joins the queue's entity (jobs by their ``origin``, workers by their
first queue); what names no queue is RQ's bookkeeping and joins none.
``rq:scheduler-lock:<q>`` is a real lock (the scheduler's) and left to the lock
recognisers.
"""

from __future__ import annotations

import re

from collectors.layouts.facts import Fact, Job, JobFact, QueueFact, QueuePartFact
from collectors.records import KeyRecord, display

LAYOUT = "rq"
REGISTRIES = {
    "wip": "started",
    "finished": "finished",
    "failed": "failed",
    "deferred": "deferred",
    "scheduled": "scheduled",
    "canceled": "canceled",
}
KEY = re.compile(r"^rq:(?P<kind>[a-z_]+)(?::(?P<rest>.*))?$")
FIRST_QUEUE = re.compile(r"[^,]+")


def recognise(rec: KeyRecord) -> Fact | None:
    m = KEY.match(rec.key)
    if m is None:
        return None
    kind, rest = m["kind"], m["rest"]
    if kind == "queue" and rest and rec.type == "list":
        if rest.startswith("_compact:"):  # a temporary copy while RQ compacts a queue
            return QueuePartFact(queue="", layout=LAYOUT, role="compaction")
        return QueueFact(queue=rest, layout=LAYOUT)
    if kind == "job" and rest:
        if rec.type == "hash" and ":" not in rest:
            return _job(rec, rest)
        if rec.type == "set":
            return QueuePartFact(queue="", layout=LAYOUT, role="job links")
        return None
    if kind in REGISTRIES and rest and rec.type == "zset":
        return QueuePartFact(queue=rest, layout=LAYOUT, role="registry", status=REGISTRIES[kind])
    if kind == "worker" and rest:
        if rec.type == "hash" and ":" not in rest:
            queues = FIRST_QUEUE.match(display(rec.fields.get(b"queues", b"")))
            state = display(rec.fields.get(b"state", b""))
            return QueuePartFact(
                queue=queues[0] if queues else "", layout=LAYOUT, role="worker", status=state
            )
        return QueuePartFact(queue="", layout=LAYOUT, role="worker's executions")
    if kind == "workers":
        return QueuePartFact(queue=rest or "", layout=LAYOUT, role="worker index")
    if kind == "queues" and rest is None and rec.type == "set":
        return QueuePartFact(queue="", layout=LAYOUT, role="queue index")
    if kind in ("results", "execution", "executions"):
        return QueuePartFact(queue="", layout=LAYOUT, role=kind)
    if kind in ("clean_registries", "clean_groups") and rec.type == "string":
        return QueuePartFact(queue=rest or "", layout=LAYOUT, role="maintenance throttle")
    return None


def _job(rec: KeyRecord, job_id: str) -> JobFact:
    def get(name: bytes) -> str:
        return display(rec.fields.get(name, b""))

    job = Job(
        id=job_id,
        status=get(b"status") or "created",
        description=get(b"description")[:200],
        worker=get(b"worker_name"),
        enqueued=get(b"enqueued_at"),
        ended=get(b"ended_at"),
    )
    return JobFact(queue=get(b"origin"), layout=LAYOUT, job=job)
