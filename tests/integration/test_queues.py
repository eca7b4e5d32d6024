"""Queues written by other clients: a plain consumer group (redis-py) and a real RQ queue
worked by a real ``rq worker`` process, read back by the collectors."""

from __future__ import annotations

import time

from rq import Queue as RqQueue

from app.cluster import ClusterInfo
from collectors.families.keys import RawKey
from collectors.families.locks import Lock
from collectors.families.queues import Queue, Queues
from collectors.redis_streams import REFRESH_EVERY_S
from collectors.state import State
from tests.conftest import observing, redis_client, redis_port, until
from tests.tools import rq_jobs


def queue(st: State, layout: str, name: str) -> Queue | None:
    found = st.get("queue", f"redis:redis-1:{layout}:{name}")
    return found if isinstance(found, Queue) else None


def consumer_pending(st: State) -> tuple[int, int, int | None] | None:
    q = queue(st, "stream", "orders")
    if q is None or not q.groups or not q.groups[0].consumers:
        return None
    g = q.groups[0]
    return g.pending, g.consumers[0].pending, g.lag


async def test_a_consumer_group_shows_pending_and_lag_and_an_ack_clears_it(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus:
        client.xgroup_create("orders", "billing", id="0", mkstream=True)
        client.xadd("orders", {"order": "7"})
        client.xadd("orders", {"order": "8"})
        await until(
            bus, lambda st: (q := queue(st, "stream", "orders")) is not None and q.length == 2, "the queue"
        )
        client.xreadgroup("billing", "worker-1", {"orders": ">"}, count=1)  # no notification
        await until(bus, lambda st: consumer_pending(st) == (1, 1, 1), "one pending, lag 1", timeout=5)
        q = queue(bus.state, "stream", "orders")
        assert q is not None and q.layout == "stream" and q.last_id is not None
        g = q.groups[0]
        assert g.name == "billing" and g.oldest_pending is not None and g.oldest_deliveries == 1
        assert g.consumers[0].name == "worker-1"
        assert f"re-read every {REFRESH_EVERY_S:g}s" in Queues.title  # the panel says how
        entry_id = g.oldest_pending
        client.xack("orders", "billing", entry_id)  # no notification either
        acked = time.monotonic()
        await until(bus, lambda st: consumer_pending(st) == (0, 0, 1), "the ack", timeout=5)
        took = time.monotonic() - acked
        assert took < REFRESH_EVERY_S + 1.0, f"the ack showed after {took:.2f}s"
        q = queue(bus.state, "stream", "orders")
        assert q is not None and q.groups[0].oldest_pending is None
        client.delete("orders")
        await until(bus, lambda st: queue(st, "stream", "orders") is None, "the stream's deletion")


async def test_a_stream_without_groups_is_not_a_queue_and_a_list_named_like_one_is(
    cluster: ClusterInfo,
) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus:
        client.xadd("audit-log", {"a": "1"})
        client.rpush("mail:queue", "m1", "m2", "m3")
        await until(bus, lambda st: queue(st, "list", "mail:queue") is not None, "the list queue")
        q = queue(bus.state, "list", "mail:queue")
        assert q is not None and q.length == 3 and q.head == ("m1", "m2", "m3")
        await until(bus, lambda st: st.get("key", "redis:redis-1:audit-log") is not None, "the log as a key")
        assert queue(bus.state, "stream", "audit-log") is None


def _statuses(st: State, name: str) -> dict[str, str]:
    q = queue(st, "rq", name)
    return {j.id: j.status for j in q.job_list} if q is not None else {}


async def test_an_rq_queue_shows_its_jobs_in_their_four_states(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    rq = RqQueue("emails", connection=client)
    async with observing(cluster) as bus:
        done = [rq.enqueue(rq_jobs.double, 2), rq.enqueue(rq_jobs.double, 3)]
        failed = rq.enqueue(rq_jobs.fail)
        started = rq.enqueue(rq_jobs.wait_for, "emails-go")
        await until(bus, lambda st: len(_statuses(st, "emails")) == 4, "four queued jobs")
        assert set(_statuses(bus.state, "emails").values()) == {"queued"}
        worker = rq_jobs.worker(redis_port(cluster, "redis-1"), "emails")
        try:
            await until(
                bus,
                lambda st: _statuses(st, "emails").get(started.id) == "started",
                "the blocking job started",
                timeout=20,
            )
            waiting = rq.enqueue(rq_jobs.double, 4)  # the worker is busy: it stays queued
            want = {
                done[0].id: "finished",
                done[1].id: "finished",
                failed.id: "failed",
                started.id: "started",
                waiting.id: "queued",
            }
            await until(bus, lambda st: _statuses(st, "emails") == want, "the four states", timeout=10)
            q = queue(bus.state, "rq", "emails")
            assert q is not None
            assert q.jobs == {"queued": 1, "started": 1, "finished": 2, "failed": 1}
            assert q.length == 1 and q.workers and "(busy)" in q.workers[0]
            assert q.key == "rq:queue:emails"
            # RQ's bookkeeping is neither a raw key nor a lock
            held = {k for k in bus.state.keys_of("redis-1") if k.startswith("rq:")}
            assert {"rq:queues", "rq:workers", "rq:wip:emails", "rq:failed:emails"} <= held
            for entity in bus.state.snapshot().of("key"):
                assert not (isinstance(entity, RawKey) and entity.key.startswith("rq:")), entity.key
            for entity in bus.state.snapshot().of("lock"):
                assert not (isinstance(entity, Lock) and entity.name.startswith("rq:")), entity.name
            client.lpush("emails-go", "1")
            assert worker.wait(30) == 0
            await until(
                bus,
                lambda st: set(_statuses(st, "emails").values()) == {"finished", "failed"},
                "all jobs ended",
            )
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
