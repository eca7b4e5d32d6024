"""The business database: a scenario's tables live in a PostgreSQL schema of its own
(``coordscope_<run>``), created when the run starts and dropped when it ends (or by
its janitor), so a run never touches anyone else's tables."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from collectors.targets import PostgresTarget

CONNECT_TIMEOUT_S = 5


def schema_for(run_id: str) -> str:
    """A PostgreSQL identifier for the run's schema (lower case, ``[a-z0-9_]``)."""
    return "coordscope_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower())


@dataclass(frozen=True)
class Database:
    """Where one side of a run keeps its tables: a PostgreSQL server and a schema in it.
    ``name`` is the server's node, with the side when two share one server (``postgres-1/a``)."""

    name: str
    target: PostgresTarget
    schema: str

    def describe(self) -> dict[str, str]:
        """What a service process is told of it (``--participants``)."""
        return {"name": self.name, "dsn": self.target.dsn, "schema": self.schema}


def two_databases(run_id: str, servers: tuple[PostgresTarget, ...]) -> tuple[Database, Database]:
    """Two sides' databases: the first two servers, the run's schema in each, or two schemas
    (``_a``, ``_b``) of the only one."""
    base, first = schema_for(run_id), servers[0]
    if len(servers) > 1:
        return Database(first.id, first, base), Database(servers[1].id, servers[1], base)
    return Database(f"{first.id}/a", first, base + "_a"), Database(f"{first.id}/b", first, base + "_b")


async def connect(
    target: PostgresTarget | str, autocommit: bool = False, name: str = ""
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """A connection; ``name``: its ``application_name`` (who it is, in ``pg_stat_activity``
    and on the screens' waiters)."""
    dsn = target if isinstance(target, str) else target.dsn
    return await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=name or None,  # None: left out of the conninfo
    )


async def create_schema(target: PostgresTarget, schema: str, ddl: str) -> None:
    """Create the run's schema with ``ddl`` run inside it (one transaction)."""
    async with await connect(target) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(ddl.encode())


DROP_LOCK_TIMEOUT = "2s"


async def drop_schema(dsn: str, schema: str) -> bool:
    """Drop the schema and everything in it. False when something held a lock on it for
    longer than :data:`DROP_LOCK_TIMEOUT` (a prepared transaction: it would wait for
    ever); True when it is gone, or when the database could not be reached (nothing more
    to do from here)."""
    try:
        async with await connect(dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.errors.LockNotAvailable:
        return False
    except (psycopg.Error, OSError):
        pass
    return True


def error_line(exc: BaseException, limit: int = 160) -> str:
    """An error's first line (a database error's message, without its DETAIL and HINT)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


async def prepared_gids(target: PostgresTarget | str, prefix: str) -> list[str]:
    """The gids of the prepared transactions that start with ``prefix`` (ours: a run's, or
    one coordinator's)."""
    async with await connect(target, autocommit=True) as conn:
        cur = await conn.execute("SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", (prefix,))
        return [str(g) for (g,) in await cur.fetchall()]


async def roll_back_prepared(dsn: str, prefix: str) -> list[str]:
    """``ROLLBACK PREPARED`` every prepared transaction whose gid starts with ``prefix``
    (ours: a run's branches left in doubt); the gids rolled back (none when unreachable)."""
    done: list[str] = []
    with contextlib.suppress(psycopg.Error, OSError):
        gids = await prepared_gids(dsn, prefix)
        async with await connect(dsn, autocommit=True) as conn:
            for gid in gids:
                with contextlib.suppress(psycopg.errors.UndefinedObject):  # resolved meanwhile
                    await conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
                    done.append(str(gid))
    return done


class Pool:
    """A service's few connections, kept open and lent one per transaction (there is no
    psycopg_pool here): a request waits for a free one instead of opening its own, and a
    connection found broken is replaced before it is lent."""

    def __init__(self, dsn: str, size: int, name: str) -> None:
        self.dsn, self.size, self.name = dsn, size, name
        self._free: asyncio.Queue[psycopg.AsyncConnection[tuple[object, ...]]] = asyncio.Queue()

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        return await connect(self.dsn, autocommit=True, name=self.name)

    async def open(self) -> None:
        for _ in range(self.size):
            self._free.put_nowait(await self._connect())

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """A connection in autocommit mode (``async with conn.transaction()`` for one)."""
        conn = await self._free.get()
        try:
            if conn.closed or conn.broken:
                conn = await self._connect()  # if this fails, the broken one goes back: tried again
            yield conn
        finally:
            self._free.put_nowait(conn)

    async def rows(
        self, statement: sql.Composed, params: tuple[object, ...] = ()
    ) -> list[tuple[object, ...]]:
        """One statement on a lent connection (its own transaction): the rows it returns."""
        async with self.connection() as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchall()

    async def close(self) -> None:
        while not self._free.empty():
            with contextlib.suppress(psycopg.Error, OSError):
                await self._free.get_nowait().close()
