"""The money the transaction scenarios move: accounts in two PostgreSQL databases.

Every transaction scenario moves an amount from an account held by one participant
(a PostgreSQL server) to an account held by the other, so the balances of both, read
at the end, prove atomicity: the total never changes, and each transfer is applied on
both sides or on neither.

A participant keeps its tables in a schema of the run's own (:func:`schema_of`):

- 2PC (``txn-2pc``): ``accounts(id, balance ≥ 0)`` and ``applied(txn, account,
  delta)``, a row per branch that committed (in the branch's own transaction: the
  database says which branches took effect).
- TCC (``txn-tcc``): ``accounts(id, available, frozen)``, ``tcc_fence_log`` as Seata's
  TCC fence keeps it (``xid``, ``branch_id``, ``action_name``, ``status``; our status is
  its name — Seata's 1 TRIED, 2 COMMITTED, 3 ROLLBACKED, 4 SUSPENDED are TRIED,
  CONFIRMED, CANCELLED, SUSPENDED here), and ``effects``: a row per phase applied to an
  account, in the same transaction as the change, so a phase applied twice shows.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from collectors.targets import PostgresTarget
from scenarios.kit.database import Database, two_databases

TWO_PC_DDL = """
CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE applied (
    txn text PRIMARY KEY, account text NOT NULL, delta bigint NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
"""

TCC_DDL = """
CREATE TABLE accounts (id text PRIMARY KEY, available bigint NOT NULL, frozen bigint NOT NULL);
CREATE TABLE tcc_fence_log (
    xid text NOT NULL, branch_id text NOT NULL, action_name text NOT NULL, status text NOT NULL,
    gmt_create timestamptz NOT NULL DEFAULT now(), gmt_modified timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, branch_id)
);
CREATE TABLE effects (
    n bigserial PRIMARY KEY, xid text NOT NULL, branch_id text NOT NULL, phase text NOT NULL,
    account text NOT NULL, available bigint NOT NULL, frozen bigint NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
"""


Participant = Database
"""A PostgreSQL server that holds accounts (a side of the transfer)."""


def participants(run_id: str, servers: tuple[PostgresTarget, ...]) -> list[Participant]:
    """Two participants: the first two servers, or two schemas of the only one."""
    return list(two_databases(run_id, servers))


def account_ids(count: int) -> list[str]:
    return [f"acct-{i + 1}" for i in range(count)]


def seed_sql(schema: str, ids: list[str], balance: int, tcc: bool) -> sql.Composed:
    columns = "(id, available, frozen)" if tcc else "(id, balance)"
    rows = sql.SQL(", ").join(
        sql.SQL("({}, {}" + (", 0)" if tcc else ")")).format(sql.Literal(i), sql.Literal(balance))
        for i in ids
    )
    return sql.SQL("INSERT INTO {}.accounts " + columns + " VALUES ").format(sql.Identifier(schema)) + rows


async def balances(conn: Any, schema: str, tcc: bool) -> dict[str, tuple[int, int]]:
    """account -> (balance or available, frozen) as the database holds them now."""
    columns = "available, frozen" if tcc else "balance, 0"
    cur = await conn.execute(
        sql.SQL("SELECT id, " + columns + " FROM {}.accounts ORDER BY id").format(sql.Identifier(schema))
    )
    return {str(i): (int(a), int(f)) for i, a, f in await cur.fetchall()}


async def applied(conn: Any, schema: str) -> dict[str, tuple[str, int]]:
    """2PC: txn -> (account, delta) of every branch that committed on this participant."""
    cur = await conn.execute(
        sql.SQL("SELECT txn, account, delta FROM {}.applied").format(sql.Identifier(schema))
    )
    return {str(t): (str(a), int(d)) for t, a, d in await cur.fetchall()}


async def prepared(conn: Any, prefix: str) -> list[tuple[str, int, int]]:
    """(gid, age ms, locks held) of the prepared transactions whose gid starts with ``prefix``."""
    cur = await conn.execute(
        """
        SELECT p.gid, (extract(epoch FROM now() - p.prepared) * 1000)::bigint,
               (SELECT count(*) FROM pg_locks l
                 WHERE l.pid IS NULL AND l.virtualtransaction IN (
                   SELECT v.virtualtransaction FROM pg_locks v
                    WHERE v.locktype = 'transactionid' AND v.transactionid = p.transaction AND v.pid IS NULL))
          FROM pg_prepared_xacts p WHERE starts_with(p.gid, %s) ORDER BY p.prepared
        """,
        (prefix,),
    )
    return [(str(g), int(a), int(n)) for g, a, n in await cur.fetchall()]


async def fence_log(conn: Any, schema: str) -> list[tuple[str, str, str]]:
    """TCC: (xid, branch, status) of every fence log row."""
    cur = await conn.execute(
        sql.SQL("SELECT xid, branch_id, status FROM {}.tcc_fence_log ORDER BY gmt_create").format(
            sql.Identifier(schema)
        )
    )
    return [(str(x), str(b), str(s)) for x, b, s in await cur.fetchall()]


async def effects(conn: Any, schema: str) -> list[tuple[str, str, str, str, int, int]]:
    """TCC: (xid, branch, phase, account, Δavailable, Δfrozen) of every phase applied, in order."""
    cur = await conn.execute(
        sql.SQL("SELECT xid, branch_id, phase, account, available, frozen FROM {}.effects ORDER BY n").format(
            sql.Identifier(schema)
        )
    )
    return [(str(x), str(b), str(p), str(a), int(d), int(f)) for x, b, p, a, d, f in await cur.fetchall()]
