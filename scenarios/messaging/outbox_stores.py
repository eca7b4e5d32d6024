"""What ``txn-outbox`` keeps in PostgreSQL and Redis, and how the run reads it.

A's schema (``coordscope_<run>``, on the first PostgreSQL): ``orders`` (the business
rows) and ``outbox`` — Debezium's outbox columns (``id``, ``aggregatetype``,
``aggregateid``, ``type``, ``payload``) plus ``created_at`` and ``sent_at``, which is how
the screens recognise an outbox and show its backlog. B's schema (``coordscope_<run>``,
on the second PostgreSQL; with only one, A's and B's are ``_a`` and ``_b`` of it):
``inbox`` (a message id's primary key: applied once) and ``effects``, with no unique key
on purpose, so a message applied twice is two rows.

At the end the run reads all of it, and the stream's entries, into the history
(``orders``, ``outbox``, ``stream``, ``effects``, ``inbox``, ``db-read``): what the
checker judges.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.runs import RUNNER
from scenarios.kit.clients import behind, text
from scenarios.kit.context import RunContext
from scenarios.kit.database import Database, connect
from scenarios.messaging.outbox_consumer import GROUP

A_DDL = """
CREATE TABLE orders (
    id text PRIMARY KEY, amount bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE outbox (
    id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL,
    payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), sent_at timestamptz
);
CREATE INDEX outbox_unsent ON outbox (created_at, id) WHERE sent_at IS NULL;
"""
B_DDL = """
CREATE TABLE inbox (
    message_id text PRIMARY KEY, consumer text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE effects (
    message_id text NOT NULL, order_id text NOT NULL, amount bigint NOT NULL, consumer text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
STREAM_PAGE = 1000
STREAM_PAGES = 100
"""The stream is read back in pages, at most this many (100,000 entries)."""


def _ms(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000)::bigint"


async def backlog(conn: Any, schema: str) -> tuple[int, int]:
    """(unsent rows, the oldest's age in ms) of A's outbox now."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT count(*), " + _ms("clock_timestamp() - min(created_at)") + " FROM {}.outbox "
            "WHERE sent_at IS NULL"
        ).format(sql.Identifier(schema))
    )
    unsent, oldest = await cur.fetchone()
    return int(unsent), int(oldest or 0)


async def unsettled(conn: Any, schema: str, broker: Redis, stream: str) -> str:
    """What is still on its way ("" when nothing): unsent rows, entries the group has not
    read, entries read and not acknowledged."""
    unsent, _ = await backlog(conn, schema)
    if unsent:
        return f"{unsent} outbox row(s) unsent"
    try:
        return await behind(broker, stream, GROUP)
    except (redis_errors.RedisError, OSError) as exc:
        return f"the stream's Redis does not answer ({type(exc).__name__})"


ORDERS = "SELECT id, amount FROM {}.orders"
OUTBOX = f"SELECT id, sent_at IS NOT NULL, {_ms('created_at')}, {_ms('sent_at')} FROM {{}}.outbox"
EFFECTS = (
    f"SELECT message_id, order_id, amount, consumer, {_ms('applied_at')} FROM {{}}.effects "
    "ORDER BY applied_at"
)
INBOX = "SELECT message_id, consumer FROM {}.inbox"


async def _rows(conn: Any, query: str, schema: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql.SQL(query).format(sql.Identifier(schema)))
    return list(await cur.fetchall())


async def read(ctx: RunContext, a: Database, b: Database, broker: Redis, stream: str) -> list[list[str]]:
    """Everything the stores hold at the end, into the history; one row per message for
    the run's table (message, A's order, outbox row, stream entries, B's effects)."""
    async with await connect(a.target, autocommit=True) as conn:
        orders = [[str(i), int(n)] for i, n in await _rows(conn, ORDERS, a.schema)]
        outbox = [
            [str(i), bool(sent), int(c), int(t) if t is not None else None]
            for i, sent, c, t in await _rows(conn, OUTBOX, a.schema)
        ]
    entries = await _entries(broker, stream)
    pending = int((await broker.xpending(stream, GROUP)).get("pending", 0))
    async with await connect(b.target, autocommit=True) as conn:
        effects = [
            [str(m), str(o), int(n), str(c), int(t)] for m, o, n, c, t in await _rows(conn, EFFECTS, b.schema)
        ]
        inbox = [[str(m), str(c)] for m, c in await _rows(conn, INBOX, b.schema)]
    sent = sum(1 for r in outbox if r[1])
    reads: list[tuple[str, str, dict[str, Any]]] = [
        ("orders", f"{a.name} {a.schema}.orders: {len(orders)} row(s)", {"rows": orders}),
        ("outbox", f"{a.name} {a.schema}.outbox: {len(outbox)} row(s), {sent} sent", {"rows": outbox}),
        (
            "stream",
            f"{stream}: {len(entries)} entr(ies), {pending} pending in group {GROUP}",
            {"entries": entries, "pending": pending},
        ),
        ("effects", f"{b.name} {b.schema}.effects: {len(effects)} row(s)", {"rows": effects}),
        ("inbox", f"{b.name} {b.schema}.inbox: {len(inbox)} row(s)", {"rows": inbox}),
    ]
    for f, note, data in reads:
        ctx.record(RUNNER, "ok", f, note=note, data=data)
    ctx.record(RUNNER, "ok", "db-read", note="A's and B's databases and the stream read")
    return _table(orders, outbox, entries, effects)


async def _entries(broker: Redis, stream: str) -> list[list[str]]:
    """[entry id, message id] of every entry of the stream, in order."""
    out: list[list[str]] = []
    start = "-"
    for _ in range(STREAM_PAGES):
        page: Any = await broker.xrange(stream, min=start, count=STREAM_PAGE)
        out += [[text(e), text(f.get(b"id", b"?"))] for e, f in page]
        if len(page) < STREAM_PAGE:
            break
        start = "(" + text(page[-1][0])
    return out


def _table(
    orders: list[list[Any]], outbox: list[list[Any]], entries: list[list[str]], effects: list[list[Any]]
) -> list[list[str]]:
    amounts = {str(i): str(n) for i, n in orders}
    sent = {str(r[0]): "sent" if r[1] else "unsent" for r in outbox}
    published: dict[str, int] = {}
    for _, msg in entries:
        published[msg] = published.get(msg, 0) + 1
    applied: dict[str, list[str]] = {}
    for m, _, _, c, _ in effects:
        applied.setdefault(str(m), []).append(str(c))
    msgs = sorted(set(amounts) | set(sent) | set(published) | set(applied), key=lambda m: (len(m), m))
    rows = [["message", "A's order (amount)", "outbox row", "published", "applied by"]]
    for m in msgs:
        rows.append(
            [
                m,
                amounts.get(m, "none"),
                sent.get(m, "none"),
                f"×{published[m]}" if m in published else "no",
                ", ".join(applied.get(m, [])) or "nobody",
            ]
        )
    return rows
