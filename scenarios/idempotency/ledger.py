"""The payment ledger: a table in PostgreSQL that records every charge.

It lives in the run's own schema. With ``guard=db-unique`` the table has a
unique key on the order id — the seed's first remedy: the database refuses a
second charge of the same order, whichever instance tries it, and the
instance answers with the charge that is already there.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

LEDGER = "ledger"

DDL = """
CREATE TABLE ledger (
    charge_id   bigserial PRIMARY KEY,
    order_id    text        NOT NULL,
    amount      integer     NOT NULL,
    instance    text        NOT NULL,
    request_id  text        NOT NULL,
    t_ms        integer     NOT NULL,
    charged_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
UNIQUE = "ALTER TABLE ledger ADD CONSTRAINT ledger_one_charge_per_order UNIQUE (order_id);"


def ddl(unique: bool) -> str:
    return DDL + (UNIQUE if unique else "")


@dataclass(frozen=True)
class Charge:
    charge_id: int
    order_id: str
    amount: int
    instance: str
    request_id: str
    t_ms: int


class AlreadyCharged(Exception):
    """The unique key refused a second charge: here is the first."""

    def __init__(self, charge: Charge) -> None:
        super().__init__(f"order {charge.order_id} already charged ({charge.charge_id})")
        self.charge = charge


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(LEDGER))


async def charge(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    schema: str,
    order_id: str,
    amount: int,
    instance: str,
    request_id: str,
    t_ms: int,
) -> Charge:
    """Record a charge (committed when this returns); AlreadyCharged under a unique key."""
    query = sql.SQL(
        "INSERT INTO {} (order_id, amount, instance, request_id, t_ms) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING charge_id"
    ).format(_table(schema))
    try:
        async with conn.transaction():
            cur = await conn.execute(query, (order_id, amount, instance, request_id, t_ms))
            row = await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        first = await charges_of(conn, schema, order_id)
        raise AlreadyCharged(first[0]) from None
    assert row is not None
    return Charge(int(str(row[0])), order_id, amount, instance, request_id, t_ms)


async def charges_of(
    conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str, order_id: str | None = None
) -> list[Charge]:
    """Every charge (of one order), oldest first, as the database holds them."""
    where = sql.SQL(" WHERE order_id = %s") if order_id is not None else sql.SQL("")
    query = sql.SQL(
        "SELECT charge_id, order_id, amount, instance, request_id, t_ms FROM {}{} ORDER BY charge_id"
    ).format(_table(schema), where)
    cur = await conn.execute(query, (order_id,) if order_id is not None else ())
    rows = await cur.fetchall()
    if not conn.autocommit:
        await conn.commit()
    return [
        Charge(int(str(r[0])), str(r[1]), int(str(r[2])), str(r[3]), str(r[4]), int(str(r[5]))) for r in rows
    ]
