"""Watch a PostgreSQL server: is it there, what is it.

PostgreSQL has no change feed for what coordination cares about (prepared
transactions, who waits on whose locks, sessions idle in a transaction), so
it is polled, every ``every_s`` seconds, and the node says so. Each prepared
transaction (whoever prepared it) and each session idle in a transaction is a
record of the state (:mod:`collectors.layouts.postgres_xacts`), shown in the
transactions panel with its age; one that ended is dropped at the next poll.
Each outbox table of the database it is connected to (a table named like an
outbox: :mod:`collectors.layouts.postgres_outbox`) is a record too, its backlog
(rows not sent yet, the oldest one's age) shown as a queue. Read-only: a
plain connection that runs ``SELECT``s and nothing else. A server that stops
answering is shown down with the time of its last good read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from collectors.families.nodes import Node
from collectors.layouts import postgres_outbox, postgres_xacts
from collectors.records import KeyRecord
from collectors.state import State, now_ms
from collectors.targets import PostgresTarget

POLL_S = 1.0
LISTED = 500
"""At most this many prepared transactions, and as many idle sessions, per poll."""
PREPARED_SQL = f"""
SELECT p.gid, (extract(epoch FROM p.prepared) * 1000)::bigint, p.owner, p.database,
       p.transaction::text,
       (SELECT count(*) FROM pg_locks l WHERE l.pid IS NULL AND l.virtualtransaction = v.vx),
       (SELECT string_agg(DISTINCT c.relname, ',') FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
         WHERE l.pid IS NULL AND l.virtualtransaction = v.vx),
       (SELECT string_agg(DISTINCT w.pid::text || coalesce(' (' || nullif(a.application_name, '') || ')', ''),
                          ', ')
          FROM pg_locks w LEFT JOIN pg_stat_activity a ON a.pid = w.pid
         WHERE NOT w.granted AND (
           (w.locktype = 'transactionid' AND w.transactionid = p.transaction)
           OR (w.relation IS NOT NULL AND w.relation IN (
             SELECT h.relation FROM pg_locks h
              WHERE h.pid IS NULL AND h.virtualtransaction = v.vx AND h.relation IS NOT NULL))))
  FROM pg_prepared_xacts p
  LEFT JOIN LATERAL (
    SELECT l.virtualtransaction AS vx FROM pg_locks l
     WHERE l.locktype = 'transactionid' AND l.transactionid = p.transaction AND l.pid IS NULL LIMIT 1
  ) v ON true
 ORDER BY p.prepared LIMIT {LISTED}
"""
"""A prepared transaction: its gid, when (ms), owner, database, xid, the locks it holds
(``pg_locks`` keeps a prepared transaction's locks under the virtual transaction of the
session that prepared it, with no pid: found through the lock on its own xid), the
tables they are on (those of the database we are connected to), and the backends
waiting on them, each with its ``application_name`` when it set one: on its xid (a row it
changed) or on a table it locked."""
IDLE_SQL = f"""
SELECT pid, usename, datname, (extract(epoch FROM xact_start) * 1000)::bigint, left(query, 80)
  FROM pg_stat_activity
 WHERE state IN ('idle in transaction', 'idle in transaction (aborted)') AND pid <> pg_backend_pid()
 ORDER BY xact_start LIMIT {LISTED}
"""
CONNECT_TIMEOUT_S = 2
ANSWER_S = 4.0
"""A poll unanswered this long: the server is shown down."""


class PgCollector:
    def __init__(
        self, target: PostgresTarget, state: State, wake: Callable[[], None], every_s: float = POLL_S
    ) -> None:
        self.target = target
        self._state = state
        self._wake = wake
        self._every_s = every_s
        self._node = Node(
            id=target.id,
            store="postgres",
            address=target.address,
            feed=f"polled every {every_s:g}s (PostgreSQL has no change feed)",
        )
        self.synced = asyncio.Event()
        """Set once the server has been read (or found down) once."""
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._held: set[bytes] = set()
        """The records of prepared transactions and idle sessions the state holds from us."""

    async def run(self) -> None:
        """Poll every ``every_s``, one query at a time. A query that does not answer is
        never cancelled (psycopg cancels through libpq's blocking PQcancel, which would stall
        the loop on a frozen server): the node is shown down meanwhile, and the next poll
        waits until that query ends one way or the other."""
        task: asyncio.Task[None] | None = None
        started = 0.0
        try:
            while True:
                if task is None:
                    task = asyncio.create_task(self._poll_once(), name=f"poll {self.target.id}")
                    started = time.monotonic()
                await asyncio.wait({task}, timeout=self._every_s)
                if task.done():
                    failure = task.exception()
                    task = None
                    if failure is not None:
                        await self._forget_connection()
                        self._down(_why(failure))
                    self.synced.set()
                    await asyncio.sleep(max(0.0, self._every_s - (time.monotonic() - started)))
                elif time.monotonic() - started >= ANSWER_S:
                    self._down(f"no answer for {time.monotonic() - started:.0f} s (frozen, or the network)")
                    self.synced.set()
        finally:
            if task is not None:
                task.cancel()
            await self._forget_connection()

    async def _poll_once(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.target.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        await self._poll(self._conn)

    async def _forget_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)

    async def _poll(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "SELECT current_setting('server_version'), pg_is_in_recovery(), "
            "(SELECT count(*) FROM pg_prepared_xacts), current_setting('max_prepared_transactions')"
        )
        row = await cur.fetchone()
        assert row is not None
        version, standby, prepared, max_prepared = row
        was = self._node.status
        detail = f"PostgreSQL {version}; {prepared} prepared transaction(s) (max {max_prepared})"
        self._node = replace(
            self._node,
            role="standby" if standby else "primary",
            status="up",
            as_of_ms=now_ms(),
            detail=detail,
        )
        if was != "up":
            self._state.log("info", self.target.id, f"up ({self._node.role}, PostgreSQL {version})")
        await self._transactions(conn)
        self._publish()

    async def _transactions(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every prepared transaction and every session idle in a transaction, as records
        of the state (one per gid, one per backend); those gone since the last poll dropped."""
        read_at = now_ms()
        records: dict[bytes, KeyRecord] = {}
        cur = await conn.execute(PREPARED_SQL)
        for gid, since, owner, database, xid, locks, relations, waiters in await cur.fetchall():
            fields = {"gid": gid, "since_ms": since, "owner": owner, "database": database, "xid": xid,
                      "locks": locks, "relations": relations, "waiters": waiters}  # fmt: skip
            raw = postgres_xacts.prepared_key(str(gid))
            records[raw] = self._record(raw, postgres_xacts.PREPARED, fields, read_at)
        cur = await conn.execute(IDLE_SQL)
        for pid, user, database, since, query in await cur.fetchall():
            fields = {"pid": pid, "user": user, "database": database, "since_ms": since, "query": query}
            raw = postgres_xacts.idle_key(int(pid))
            records[raw] = self._record(raw, postgres_xacts.IDLE, fields, read_at)
        await self._outboxes(conn, records, read_at)
        for raw in self._held - records.keys():
            self._state.drop_key(self.target.id, raw, "ended")
        for rec in records.values():
            self._state.apply_key(rec)
        self._held = set(records)

    async def _outboxes(
        self, conn: psycopg.AsyncConnection[Any], into: dict[bytes, KeyRecord], read_at: int
    ) -> None:
        """Each outbox table's backlog: rows not sent yet, and since when the oldest waits.

        A table that cannot be read (dropped meanwhile, no privilege, too slow) is left out
        of this poll; the others are read."""
        cur = await conn.execute(postgres_outbox.DISCOVER_SQL)
        for schema, table, columns in await cur.fetchall():
            stamp, flag, created = postgres_outbox.shape(list(columns))
            if stamp:
                waiting, marker = sql.SQL("{} IS NULL").format(sql.Identifier(stamp)), f"{stamp} IS NULL"
            elif flag:
                waiting, marker = (
                    sql.SQL("NOT coalesce({}, false)").format(sql.Identifier(flag)),
                    f"NOT {flag}",
                )
            else:
                waiting, marker = sql.Composed([sql.SQL("true")]), "deleted once sent"
            oldest = (
                sql.SQL("(extract(epoch FROM min({c}) FILTER (WHERE {w})) * 1000)::bigint").format(
                    c=sql.Identifier(created), w=waiting
                )
                if created
                else sql.SQL("NULL::bigint")
            )
            query = sql.SQL(
                "SELECT count(*) FILTER (WHERE {w}), count(*), {o}, current_database() FROM {t}"
            ).format(w=waiting, o=oldest, t=sql.Identifier(schema, table))
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL statement_timeout = 1000")
                    row = await (await conn.execute(query)).fetchone()
            except psycopg.errors.Error:
                continue
            if row is None:
                continue
            unsent, total, oldest_ms, database = row
            raw = postgres_outbox.key(schema, table)
            fields = {"unsent": unsent, "total": total, "oldest_ms": oldest_ms, "database": database,
                      "marker": marker}  # fmt: skip
            into[raw] = self._record(raw, postgres_outbox.OUTBOX, fields, read_at)

    def _record(self, raw: bytes, kind: str, fields: dict[str, Any], read_at: int) -> KeyRecord:
        values = {k.encode(): ("" if v is None else str(v)).encode() for k, v in fields.items()}
        return KeyRecord(
            node=self.target.id, raw_key=raw, type=kind, ttl_ms=None, read_at_ms=read_at,
            fields=values, size=len(values), cause="scan",
        )  # fmt: skip

    def _down(self, why: str) -> None:
        if self._node.status != "down":
            self._state.log("error", self.target.id, f"down: {why}")
        self._node = replace(self._node, status="down", detail=why)
        self._publish()

    def _publish(self) -> None:
        self._state.set_node(self._node)
        self._wake()


def _why(failure: BaseException) -> str:
    first = str(failure).strip().splitlines()[0] if str(failure).strip() else "no detail"
    return f"{type(failure).__name__}: {first}"
