"""Transactions as PostgreSQL holds them, whoever left them: a two-phase branch prepared with
psycopg's own API outside coordscope shows in doubt with its age, the lock it holds and the
backend waiting on it, and goes when it is committed; a session idle in a transaction shows
too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import psycopg
import pytest

from app.cluster import ClusterInfo
from collectors.families.transactions import Transaction
from collectors.layouts.postgres_xacts import IDLE_STATE, IN_DOUBT
from tests.conftest import observing, until

SCHEMA = "coordscope_test_pg_xacts"
GID = "coordscope-test-transfer-17"


@pytest.fixture
def dsn(cluster: ClusterInfo) -> Iterator[str]:
    target = cluster.pg_targets()[0]
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute(f"INSERT INTO {SCHEMA}.accounts VALUES (1, 100), (2, 100)")
    yield target.dsn
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid = %s", (GID,)).fetchall():
            conn.execute(f"ROLLBACK PREPARED '{gid}'")
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def pg_transactions(st: object, state: str) -> list[Transaction]:
    from collectors.state import State

    assert isinstance(st, State)
    return [t for t in st.entities("transaction") if isinstance(t, Transaction) and t.state == state]


async def test_a_branch_prepared_outside_shows_in_doubt_with_its_lock_and_waiter(
    cluster: ClusterInfo, dsn: str
) -> None:
    node = cluster.pg_targets()[0].id
    branch = psycopg.connect(dsn)
    branch.tpc_begin(GID)
    branch.execute(f"UPDATE {SCHEMA}.accounts SET balance = balance - 10 WHERE id = 1")
    branch.tpc_prepare()  # in doubt from here: the row stays locked until COMMIT/ROLLBACK PREPARED
    waiter = psycopg.connect(dsn, autocommit=True)
    waiter_pid = waiter.info.backend_pid
    blocked = threading.Thread(
        target=lambda: waiter.execute(f"UPDATE {SCHEMA}.accounts SET balance = balance + 1 WHERE id = 1")
    )
    idle = psycopg.connect(dsn)  # a session idle in a transaction
    idle.execute("SELECT 1")
    try:
        async with observing(cluster) as bus:
            blocked.start()
            await until(
                bus,
                lambda st: any(
                    t.id == f"pg:{node}:{GID}" and f"waiting on it: {waiter_pid}" in t.branches[0].detail
                    for t in pg_transactions(st, IN_DOUBT)
                ),
                "the prepared branch, in doubt, with the backend waiting on its row",
                timeout=15,
            )
            (doubt,) = [t for t in pg_transactions(bus.state, IN_DOUBT) if t.id.endswith(GID)]
            assert doubt.layout == "postgres" and doubt.node == node
            assert doubt.since_ms is not None and doubt.since_ms <= doubt.as_of_ms
            (b,) = doubt.branches
            assert b.state == "PREPARED" and "accounts" in b.detail and "lock(s)" in b.detail
            await until(
                bus,
                lambda st: any(
                    f"pid {idle.info.backend_pid}" in t.id for t in pg_transactions(st, IDLE_STATE)
                ),
                "the session idle in a transaction",
                timeout=15,
            )
            # the decision, from another connection, by its gid: the branch goes, the waiter goes on
            with psycopg.connect(dsn, autocommit=True) as decider:
                decider.execute(f"COMMIT PREPARED '{GID}'")
            await asyncio.to_thread(blocked.join, 15)
            assert not blocked.is_alive()
            await until(
                bus, lambda st: not any(t.id.endswith(GID) for t in st.entities("transaction")), "gone", 15
            )
            idle.rollback()
            await until(
                bus,
                lambda st: not pg_transactions(st, IDLE_STATE),
                "the idle session's transaction ended",
                15,
            )
    finally:
        for conn in (branch, waiter, idle):
            conn.close()
    with psycopg.connect(dsn) as check:
        assert check.execute(f"SELECT balance FROM {SCHEMA}.accounts WHERE id = 1").fetchone() == (91,)
