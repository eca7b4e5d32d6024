"""Outbox tables: the local message table's backlog, as the database holds it.

The outbox pattern (Debezium's outbox event router, a polling relay) writes each
message as a row in the same local transaction as the business change; a relay
publishes the rows and marks them sent (or deletes them). Nothing marks such a table
but its name and shape, so the PostgreSQL collector (:mod:`collectors.postgres`) takes
for an outbox every table of the database it watches whose name contains ``outbox``
and reads, each poll, how many rows are not sent yet and since when the oldest waits:

- *sent* is the first of :data:`SENT_TIMESTAMPS` the table has (NULL: not sent), else
  the first of :data:`SENT_FLAGS` (false: not sent); a table with neither is drained by
  deleting (Debezium's own outbox, a delete-after-publish relay): every row waits;
- *created* is the first of :data:`CREATED` it has (Debezium's columns carry none:
  then the backlog has no age).

Each table is one record of the state (type :data:`OUTBOX`), shown as a queue.
"""

from __future__ import annotations

from collectors.layouts.facts import Fact, OutboxFact
from collectors.records import KeyRecord, display

OUTBOX = "pg-outbox"
LAYOUT = "outbox"
TABLES = 50
"""At most this many outbox tables per database are read."""
SENT_TIMESTAMPS = ("sent_at", "published_at", "processed_at", "dispatched_at", "relayed_at")
SENT_FLAGS = ("sent", "published", "processed", "dispatched")
CREATED = ("created_at", "occurred_at", "inserted_at", "created", "timestamp")

DISCOVER_SQL = f"""
SELECT table_schema, table_name, array_agg(column_name::text ORDER BY column_name)
  FROM information_schema.columns
 WHERE table_name ILIKE '%outbox%' AND table_schema NOT IN ('pg_catalog', 'information_schema')
 GROUP BY table_schema, table_name
 ORDER BY table_schema, table_name LIMIT {TABLES}
"""
"""Every table named like an outbox, with its columns."""


def key(schema: str, table: str) -> bytes:
    return f"outbox/{schema}.{table}".encode()


def shape(columns: list[str]) -> tuple[str | None, str | None, str | None]:
    """(sent timestamp column, sent flag column, created column) of an outbox table."""
    have = set(columns)
    stamp = next((c for c in SENT_TIMESTAMPS if c in have), None)
    flag = None if stamp else next((c for c in SENT_FLAGS if c in have), None)
    created = next((c for c in CREATED if c in have), None)
    return stamp, flag, created


def recognise(rec: KeyRecord) -> Fact | None:
    if rec.type != OUTBOX:
        return None
    f = {display(k): display(v) for k, v in rec.fields.items()}
    name = rec.key.partition("/")[2] or rec.key

    def count(field: str) -> int:
        raw = f.get(field, "")
        return int(raw) if raw.isdigit() else 0

    oldest = f.get("oldest_ms", "")
    return OutboxFact(
        queue=name,
        database=f.get("database", "?"),
        unsent=count("unsent"),
        total=count("total"),
        oldest_ms=int(oldest) if oldest.lstrip("-").isdigit() else None,
        marker=f.get("marker", ""),
    )
