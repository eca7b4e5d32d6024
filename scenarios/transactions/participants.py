"""A 2PC coordinator's side of its participants: a pool of connections to each
PostgreSQL server, and what it asks them outside a branch (which of our branches are
prepared; is this one still prepared).

A connection is kept only while it is sound and outside any transaction: one left in a
failed or prepared state, or to a server that went away, is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg

POOL = 8
"""Connections kept per participant (a transaction holds one per branch until it ends)."""
CONNECT_TIMEOUT_S = 3
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Participant:
    """A PostgreSQL server holding accounts, as a coordinator reaches it."""

    def __init__(self, name: str, dsn: str, schema: str, application: str) -> None:
        self.name, self.dsn, self.schema, self.application = name, dsn, schema, application
        self.idle: list[Conn] = []

    async def connection(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        # autocommit: a branch says BEGIN and PREPARE TRANSACTION itself, and a decision
        # (COMMIT PREPARED) must run outside any transaction
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name=self.application
        )

    async def give_back(self, conn: Conn) -> None:
        sound = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if sound and len(self.idle) < POOL:
            self.idle.append(conn)
        else:
            await close_quietly(conn)

    async def close(self) -> None:
        while self.idle:
            await close_quietly(self.idle.pop())


async def close_quietly(conn: Conn) -> None:
    with contextlib.suppress(Exception):  # a connection to a server that died: nothing to close
        await asyncio.wait_for(conn.close(), 2)


async def is_prepared(conn: Conn, gid: str) -> bool:
    cur = await conn.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (gid,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def abandon(participant: Participant, conn: Conn) -> None:
    """Roll back a branch that never prepared (its connection kept if it is still sound)."""
    try:
        await conn.execute("ROLLBACK")
    except Exception:
        await close_quietly(conn)
    else:
        await participant.give_back(conn)
