"""The queues panel in the TUI, filled by real clients: a consumer group, a list and RQ."""

from __future__ import annotations

import asyncio

from rq import Queue as RqQueue
from textual.pilot import Pilot
from textual.widgets import Static

from app.cluster import ClusterInfo
from tests.conftest import redis_client, redis_port
from tests.tools import rq_jobs
from tests.tui.test_tui import Harness, column, rendered, table, tui

__all__ = ["tui"]


def fill(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    client.xgroup_create("orders", "billing", id="0", mkstream=True)
    for i in range(3):
        client.xadd("orders", {"order": str(i)})
    client.xreadgroup("billing", "worker-1", {"orders": ">"}, count=2)
    client.rpush("mail:queue", "welcome:ann", "welcome:bob")
    rq = RqQueue("emails", connection=client)
    rq.enqueue(rq_jobs.double, 2)
    rq.enqueue(rq_jobs.fail)
    worker = rq_jobs.worker(redis_port(cluster, "redis-1"), "emails")
    try:
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    rq.enqueue(rq_jobs.double, 3)


async def test_the_queues_panel_shows_groups_lists_and_rq_jobs(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    app, pilot = tui
    await asyncio.to_thread(fill, cluster)
    queues = table(app, "queues")
    await rendered(pilot, lambda: queues.row_count == 3, "three queues", timeout=10)
    wanted = ("2 pending", "lag 1", "queued 1", "finished 1", "failed 1")
    await rendered(
        pilot,
        lambda: all(w in " ".join(column(queues, "work")) for w in wanted),
        "pending, lag and the jobs by status",
    )
    title = app.screen_stack[0].query_one("#title-queues", Static).render()
    assert "re-read every 1s" in str(title)
    app.save_screenshot("coordscope-queues.svg", "/tmp")
