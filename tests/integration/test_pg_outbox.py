"""An outbox table as PostgreSQL holds it, whoever wrote it: its backlog (rows not sent
yet) and the oldest one's age show as a queue, grow while nothing relays them, and drain
when a relay marks them sent — or deletes them, Debezium's way."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from app.cluster import ClusterInfo
from collectors.families.queues import Queue
from tests.conftest import observing, until

SCHEMA = "coordscope_test_pg_outbox"


@pytest.fixture
def dsn(cluster: ClusterInfo) -> Iterator[str]:
    target = cluster.pg_targets()[0]
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(
            f"CREATE TABLE {SCHEMA}.outbox (id text PRIMARY KEY, aggregatetype text, aggregateid text,"
            " type text, payload jsonb, created_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " sent_at timestamptz)"
        )
        # Debezium's own outbox: no sent marker, rows go once captured
        conn.execute(
            f"CREATE TABLE {SCHEMA}.order_outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text,"
            " type text, payload jsonb)"
        )
    yield target.dsn
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def outbox(st: object, table: str) -> Queue | None:
    from collectors.state import State

    assert isinstance(st, State)
    found = [q for q in st.entities("queue") if isinstance(q, Queue) and q.name == f"{SCHEMA}.{table}"]
    return found[0] if found else None


async def test_an_outbox_backlog_grows_and_drains_as_the_database_holds_it(
    cluster: ClusterInfo, dsn: str
) -> None:
    node = cluster.pg_targets()[0].id
    async with observing(cluster) as bus:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(5):
                conn.execute(
                    f"INSERT INTO {SCHEMA}.outbox (id, aggregatetype, aggregateid, type, payload)"
                    " VALUES (%s, 'order', %s, 'OrderPlaced', '{}')",
                    (f"o{i}", f"o{i}"),
                )
            conn.execute(
                f"INSERT INTO {SCHEMA}.order_outbox"
                " VALUES (gen_random_uuid(), 'order', 'o9', 'OrderPlaced', '{}')"
            )
            await until(
                bus, lambda st: (q := outbox(st, "outbox")) is not None and q.length == 5, "5 unsent", 15
            )
            q = outbox(bus.state, "outbox")
            assert q is not None and q.store == "postgres" and q.node == node and q.layout == "outbox"
            assert q.oldest_ms is not None and q.oldest_ms <= q.as_of_ms and q.sent == 0
            debezium = outbox(bus.state, "order_outbox")
            assert debezium is not None and debezium.length == 1 and debezium.marker == "deleted once sent"
            # a relay publishes three and marks them sent; the backlog's age is now the fourth's
            conn.execute(f"UPDATE {SCHEMA}.outbox SET sent_at = now() WHERE id IN ('o0', 'o1', 'o2')")
            await until(
                bus, lambda st: (q := outbox(st, "outbox")) is not None and q.length == 2, "2 unsent", 15
            )
            q = outbox(bus.state, "outbox")
            assert q is not None and q.sent == 3
            conn.execute(f"UPDATE {SCHEMA}.outbox SET sent_at = now()")
            conn.execute(f"DELETE FROM {SCHEMA}.order_outbox")
            await until(
                bus,
                lambda st: (a := outbox(st, "outbox")) is not None and a.length == 0 and a.oldest_ms is None
                and (b := outbox(st, "order_outbox")) is not None and b.length == 0,
                "both drained",
                15,
            )  # fmt: skip
            # the table goes: so does its queue
            conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
            await until(bus, lambda st: outbox(st, "outbox") is None, "the outbox gone with its schema", 15)
