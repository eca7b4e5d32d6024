"""PostgreSQL's transactions in doubt, and sessions idle in a transaction.

PostgreSQL has no keys: the PostgreSQL collector (:mod:`collectors.postgres`) reads
``pg_prepared_xacts``, ``pg_locks`` and ``pg_stat_activity`` and hands the state one
record per prepared transaction (type :data:`PREPARED`, named by its gid) and per
session idle in a transaction (type :data:`IDLE`, named by its backend pid), with the
columns read as the record's fields. Whoever prepared it — an XA transaction manager,
a psycopg two-phase client, a coordinator of ours — a prepared transaction is a branch
in doubt: it holds its locks until somebody commits or rolls it back by its gid.
"""

from __future__ import annotations

from collectors.layouts.coordscope import parse_branch_gid
from collectors.layouts.facts import Fact, TransactionFact
from collectors.records import KeyRecord, display

PREPARED = "pg-prepared"
IDLE = "pg-idle-in-transaction"
LAYOUT = "postgres"
IN_DOUBT = "PREPARED (in doubt)"
IDLE_STATE = "IDLE IN TRANSACTION"


def prepared_key(gid: str) -> bytes:
    return f"pg_prepared_xacts/{gid}".encode()


def idle_key(pid: int) -> bytes:
    return f"pg_stat_activity/{pid}".encode()


def recognise(rec: KeyRecord) -> Fact | None:
    if rec.type not in (PREPARED, IDLE):
        return None
    f = {display(k): display(v) for k, v in rec.fields.items()}
    since = int(f["since_ms"]) if f.get("since_ms", "").isdigit() else None
    database = f.get("database") or "?"
    if rec.type == PREPARED:
        gid = f.get("gid") or rec.key.partition("/")[2]
        locks = f.get("locks", "0")
        on = f" on {f['relations']}" if f.get("relations") else ""
        waiting = f"; waiting on it: {f['waiters']}" if f.get("waiters") else ""
        detail = f"owner {f.get('owner') or '?'}, xid {f.get('xid') or '?'}, {locks} lock(s){on}{waiting}"
        ours = parse_branch_gid(gid)
        return TransactionFact(
            txn_id=f"pg:{rec.node}:{gid}",
            protocol="2PC: PREPARE TRANSACTION",
            state=IN_DOUBT,
            # a branch of one of our coordinators' transactions: named by its participant
            branches=(
                (ours[1], "PREPARED", f"{rec.node}/{database}: {detail}")
                if ours
                else (database, "PREPARED", detail),
            ),
            since_ms=since,
            layout=LAYOUT,
            part_of=ours[0] if ours else "",
        )
    pid = f.get("pid") or rec.key.partition("/")[2]
    query = f.get("query", "")
    detail = f"pid {pid}, user {f.get('user') or '?'}" + (f", last: {query}" if query else "")
    return TransactionFact(
        txn_id=f"pg:{rec.node}:pid {pid}",
        protocol="local transaction",
        state=IDLE_STATE,
        branches=((database, "OPEN", detail),),
        since_ms=since,
        layout=LAYOUT,
    )
