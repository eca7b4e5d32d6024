"""The queue recognisers on the exact bytes rq 3.0 and Redis 7 wrote (captured from a real
``rq worker`` run and real ``XINFO`` replies), and the stream-group parsing."""

from __future__ import annotations

from collectors.families import recognise_key
from collectors.layouts import LayoutConfig
from collectors.layouts.facts import JobFact, QueueFact, QueuePartFact
from collectors.records import KeyRecord, StreamGroup
from collectors.redis_streams import groups, same

# rq 3.0: a started job's hash (minus its pickled ``data``), as HGETALL returned it
STARTED_JOB = {
    b"status": b"started",
    b"created_at": b"2026-11-28T23:23:50.421745Z",
    b"success_callback_name": b"",
    b"failure_callback_name": b"",
    b"stopped_callback_name": b"",
    b"started_at": b"2026-11-28T23:23:50.575055Z",
    b"ended_at": b"",
    b"last_heartbeat": b"2026-11-28T23:23:50.575055Z",
    b"worker_name": b"c9f38db7986c4b00941e7613d32efb26",
    b"group_id": b"",
    b"origin": b"default",
    b"description": b"jobs_mod.wait_for('go')",
    b"enqueued_at": b"2026-11-28T23:23:50.422201Z",
    b"timeout": b"180",
}
WORKER = {
    b"birth": b"2026-11-28T23:23:50.566055Z",
    b"last_heartbeat": b"2026-11-28T23:23:50.575027Z",
    b"queues": b"default",
    b"pid": b"28923",
    b"hostname": b"vm",
    b"version": b"3.0.0",
    b"state": b"busy",
}
JOB_ID = "cdd3fd05-61c6-44f9-9b02-7f6273c3b7cb"


def rec(key: str, kind: str, **kw: object) -> KeyRecord:
    return KeyRecord(node="redis-1", raw_key=key.encode(), type=kind, ttl_ms=None, read_at_ms=1000, **kw)  # type: ignore[arg-type]


def test_rq_queue_job_and_registries() -> None:
    assert recognise_key(rec("rq:queue:default", "list", items=(JOB_ID.encode(),), size=1)) == QueueFact(
        queue="default", layout="rq"
    )
    job = recognise_key(rec(f"rq:job:{JOB_ID}", "hash", fields=STARTED_JOB, size=len(STARTED_JOB)))
    assert isinstance(job, JobFact)
    assert (job.queue, job.job.id, job.job.status) == ("default", JOB_ID, "started")
    assert job.job.worker == "c9f38db7986c4b00941e7613d32efb26"
    for key, status in (("wip", "started"), ("finished", "finished"), ("failed", "failed")):
        fact = recognise_key(rec(f"rq:{key}:default", "zset", items=(f"{JOB_ID}:18fb".encode(),), size=1))
        assert fact == QueuePartFact(queue="default", layout="rq", role="registry", status=status)


def test_rq_bookkeeping_is_part_of_rq_never_a_lock_or_raw() -> None:
    worker = recognise_key(rec("rq:worker:c9f38db7986c4b00941e7613d32efb26", "hash", fields=WORKER))
    assert worker == QueuePartFact(queue="default", layout="rq", role="worker", status="busy")
    helpers = [
        rec("rq:queues", "set", items=(b"rq:queue:default",)),
        rec("rq:workers", "set", items=(b"rq:worker:c9f38db7986c4b00941e7613d32efb26",)),
        rec("rq:workers:default", "set", items=(b"rq:worker:c9f38db7986c4b00941e7613d32efb26",)),
        rec("rq:clean_groups", "string", value=b"1"),
        rec(f"rq:executions:{JOB_ID}", "zset", items=(b"18fb80a166874d4f810df259f9c5acb5",)),
        rec(f"rq:results:{JOB_ID}", "stream", size=1),
        rec("rq:worker:c9f38db7986c4b00941e7613d32efb26:executions", "set"),
    ]
    for helper in helpers:
        assert isinstance(recognise_key(helper), QueuePartFact), helper.key


def test_generic_queues_by_shape_and_name() -> None:
    group = StreamGroup(name="g", pending=0, last_delivered="0-0")
    assert recognise_key(rec("orders", "stream", groups=(group,))) == QueueFact("orders", "stream")
    assert recognise_key(rec("orders", "stream")) is None  # a log, not a queue
    assert recognise_key(rec("mail:queue", "list")) == QueueFact("mail:queue", "list")
    assert recognise_key(rec("recent", "list")) is None
    config = LayoutConfig(queue_patterns=("inbox:*",))
    assert recognise_key(rec("inbox:7", "list"), config) == QueueFact("inbox:7", "list")


# Redis 7.0's RESP2 replies, as hiredis gives them
XINFO_GROUPS = [
    [
        b"name", b"billing", b"consumers", 1, b"pending", 1,
        b"last-delivered-id", b"1795908300000-0", b"entries-read", 1, b"lag", 1,
    ]
]  # fmt: skip
XINFO_CONSUMERS = [[b"name", b"worker-1", b"pending", 1, b"idle", 250]]
XPENDING_ONE = [[b"1795908300000-0", b"worker-1", 240, 1]]


def test_groups_from_xinfo_and_xpending() -> None:
    (g,) = groups(XINFO_GROUPS, [XINFO_CONSUMERS, XPENDING_ONE], read_at=10_000)
    assert (g.name, g.pending, g.lag, g.entries_read) == ("billing", 1, 1, 1)
    assert g.oldest_pending == "1795908300000-0" and g.oldest_since_ms == 9_760
    assert g.consumers[0].name == "worker-1" and g.consumers[0].idle_since_ms == 9_750
    # the same state read 1 s later (idle grew by 1 s) is the same; an ack is not
    later = groups(XINFO_GROUPS, [
        [[b"name", b"worker-1", b"pending", 1, b"idle", 1250]], [[b"1795908300000-0", b"worker-1", 1240, 1]]
    ], read_at=11_000)  # fmt: skip
    assert same((g,), later)
    acked = [[*XINFO_GROUPS[0][:5], 0, *XINFO_GROUPS[0][6:]]]
    assert not same((g,), groups(acked, [[[b"name", b"worker-1", b"pending", 0, b"idle", 9]], []], 11_000))


def test_an_error_reply_means_no_groups() -> None:
    assert groups(Exception("NOPERM"), [], 1) == ()
