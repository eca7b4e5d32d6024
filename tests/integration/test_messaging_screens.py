"""Messaging runs as the screens see them — through the collectors, the state every viewer
reads: the outbox backlog growing while the broker is down and draining after, a message
followed from A to B through a crash of B, half messages with their check counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.messages import Message
from collectors.families.queues import Queue
from collectors.families.runs import Run
from collectors.layouts import messaging
from collectors.state import State
from scenarios.kit.database import drop_schema
from tests.conftest import observing, run_scenario, until


def outbox(st: State, run_id: str) -> Queue | None:
    schema = f"coordscope_{run_id.replace('-', '_')}"
    found = [
        q for q in st.entities("queue") if isinstance(q, Queue) and q.layout == "outbox" and schema in q.name
    ]
    return found[0] if found else None


@contextlib.asynccontextmanager
async def kept_schemas(info: ClusterInfo) -> AsyncIterator[None]:
    """Drop what a run kept (``keep=on``) in PostgreSQL; Redis is flushed between tests."""
    try:
        yield
    finally:
        for target in info.pg_targets():
            async with await psycopg.AsyncConnection.connect(target.dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'coordscope_txn_outbox_%'"
                )
                for (schema,) in await cur.fetchall():
                    await drop_schema(target.dsn, schema)


def run_of(st: State, run_id: str) -> Run | None:
    found = [r for r in st.entities("run") if isinstance(r, Run) and r.id == run_id]
    return found[0] if found else None


async def test_the_outbox_backlog_grows_on_screen_while_the_broker_is_down_then_drains(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    # keep=on: the drained outbox stays to be seen (a run cleans up within a poll of settling)
    params = {"messages": "150", "fault_at": "5", "fault_ms": "3000", "keep": "on"}
    async with observing(cluster) as bus, kept_schemas(cluster):
        task = asyncio.create_task(
            run_scenario(cluster, local_cluster, "txn-outbox", ["broker-down"], **params)
        )
        await until(
            bus, lambda st: any(r.scenario == "txn-outbox" for r in st.entities("run")), "the run", 20
        )  # type: ignore[attr-defined]
        (run,) = [r for r in bus.state.entities("run") if isinstance(r, Run) and r.scenario == "txn-outbox"]
        # the stream's master stopped answering: the backlog the database holds grows...
        await until(
            bus,
            lambda st: (q := outbox(st, run.id)) is not None and q.length >= 20 and q.oldest_ms is not None,
            "the outbox backlog at 20 rows or more",
            30,
        )
        grown = outbox(bus.state, run.id)
        assert grown is not None and grown.store == "postgres" and grown.node == "postgres-1"
        # the relay's stream beside it, its group's pending entries per consumer
        streams = [
            q
            for q in bus.state.entities("queue")
            if isinstance(q, Queue) and q.key == messaging.outbox_stream_key(run.id)
        ]
        assert streams and [g.name for g in streams[0].groups] == ["b"], streams
        # ...and drains once it answers again
        await until(
            bus,
            lambda st: (q := outbox(st, run.id)) is not None and q.length == 0 and q.sent >= 150,
            "drained",
            40,
        )
        done = await task
        assert done.verdict is not None and done.verdict.holds, done.verdict
        faults = [op for op in done.stored if op.actor == "nemesis" and op.f == "fault"]
        assert faults and faults[0].note.startswith("SIGSTOP")


async def test_a_message_is_followed_on_screen_through_a_crash_of_b(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    params = {"messages": "12", "fault_at": "4"}
    async with observing(cluster) as bus:
        done = await run_scenario(cluster, local_cluster, "txn-outbox", ["consumer-crash"], **params)
        assert done.verdict is not None and done.verdict.holds, done.verdict
        await until(
            bus,
            lambda st: (r := run_of(st, done.id)) is not None and r.status == "held" and r.messages == 12,
            "the run held, its 12 messages followed",
            20,
        )
        run = run_of(bus.state, done.id)
        assert run is not None
        claimed = [j for j in run.journeys if any(s.what == "claim" for s in j.steps)]
        assert claimed, [j.path for j in run.journeys]
        j = claimed[0]
        actors = [(s.actor, s.what) for s in j.steps]
        # A committed it, the relay published it, B-1 applied it and died before its XACK;
        # B-2 claimed the entry and its inbox skipped it: applied once
        assert ("A", "committed") in actors and ("relay", "published") in actors, j.path
        applied = [a for a, w in actors if w == "applied"]
        assert len(applied) == 1 and actors.index(("A", "committed")) < actors.index(
            (applied[0], "applied")
        ), j.path
        assert any(w == "duplicate" for _, w in actors) and not j.bad, j.path
        ticks = [t for lane in run.lanes for t in lane.ticks if t.msg == j.msg]
        assert {t.kind for t in ticks} >= {"committed", "published", "applied", "claim"}


async def test_half_messages_show_their_checks_on_screen(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    params = {"orders": "4", "fault_at": "2"}
    async with observing(cluster) as bus:
        task = asyncio.create_task(
            run_scenario(cluster, local_cluster, "txn-reliable-message", ["answer-unknown"], **params)
        )

        def checked(st: State) -> bool:
            return any(
                isinstance(m, Message) and m.kind == messaging.HALF_KIND and m.state == "HALF"
                and m.tries >= 1 and m.last == "UNKNOWN" and m.next_ms is not None
                for m in st.entities("message")
            )  # fmt: skip

        await until(bus, checked, "a half message checked back, UNKNOWN, its next check due", 30)
        done = await task
        assert done.verdict is not None and done.verdict.holds, done.verdict
        await until(
            bus,
            lambda st: not [m for m in st.entities("message") if isinstance(m, Message) and m.run == done.id],
            "the run's messages gone with its cleanup",
            20,
        )
