"""Watch a PostgreSQL server: is it there, what is it.

PostgreSQL has no change feed for what coordination cares about (prepared
transactions, who waits on whose locks, sessions idle in a transaction), so
it is polled, every ``every_s`` seconds, and the node says so. Read-only: a
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

from collectors.families.nodes import Node
from collectors.state import State, now_ms
from collectors.targets import PostgresTarget

POLL_S = 2.0
CONNECT_TIMEOUT_S = 2


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

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                started = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.target.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                        )
                    await self._poll(conn)
                except (psycopg.Error, OSError) as exc:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    self._down(
                        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                    )
                self.synced.set()
                await asyncio.sleep(max(0.1, self._every_s - (time.monotonic() - started)))
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

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
        self._publish()

    def _down(self, why: str) -> None:
        if self._node.status != "down":
            self._state.log("error", self.target.id, f"down: {why}")
        self._node = replace(self._node, status="down", detail=why)
        self._publish()

    def _publish(self) -> None:
        self._state.set_node(self._node)
        self._wake()
