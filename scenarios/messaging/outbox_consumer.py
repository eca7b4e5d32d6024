"""Service B of ``txn-outbox``: one consumer of the outbox stream's group ``b``, applying
each message in ONE local transaction on B's own PostgreSQL, with an inbox — or without.

Each process is a consumer named ``<name>.<incarnation>`` (``B-1.0``; a restarted one is
a new consumer). It reads new entries with ``XREADGROUP`` and, for each, in one
transaction:

- ``inbox=on``: inserts the message id into ``inbox`` (its primary key); a conflict is a
  redelivery — the relay published the message again, or another consumer claimed an
  entry whose effect was already committed — and nothing else is done (``duplicate``);
- then the effect: a row in ``effects(message_id, order_id, amount, consumer,
  applied_at)``, which has no unique key, so a message applied twice shows in the
  database itself.

Both are one statement (a data-modifying CTE: the effect is inserted only for the inbox
row that was), which in autocommit mode is one transaction and one round trip. Only
after the commit is the entry acknowledged (``XACK``, once per batch read): a consumer
that dies in between leaves it pending, and the next one to claim it finds it in the
inbox. With ``inbox=off`` every delivery applies (``twice`` when the effects table held
the message already).

Every ``--claim-idle-ms / 2`` it takes over, with ``XAUTOCLAIM``, the entries pending
longer than ``--claim-idle-ms`` at any consumer of the group — those of a consumer that
died — and handles them first (``claim``).

Faults, armed with ``POST /_arm`` ``{"fault": "crash-before-ack"}``: after its next
message is applied (committed), the consumer narrates it, flushes its narration and
SIGKILLs itself before acknowledging anything of that batch.

Error handling: a PostgreSQL or Redis error while handling a batch leaves what was not
acknowledged pending (claimed again once idle, by this consumer or another); the error
is narrated and the loop goes on after 200 ms. An entry not written by our relay is
acknowledged and narrated, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import psycopg
from psycopg import sql
from redis import exceptions as redis_errors
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.database import connect, error_line
from scenarios.kit.process import ServiceRuntime, parser, run

GROUP = "b"
BATCH = 64
BLOCK_MS = 200
CLAIM_ROUNDS = 20
"""XAUTOCLAIM calls per claim pass at most (each takes a batch)."""
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# %(msg)s, %(order)s, %(amount)s, %(consumer)s; no row back: the inbox had it (a redelivery)
APPLY_WITH_INBOX = """
WITH i AS (
    INSERT INTO {schema}.inbox (message_id, consumer) VALUES (%(msg)s, %(consumer)s)
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id
)
INSERT INTO {schema}.effects (message_id, order_id, amount, consumer)
SELECT i.message_id, %(order)s, %(amount)s, %(consumer)s FROM i
RETURNING 0
"""
# the same, naive: always applied; the effects it found for the message before, returned
APPLY_ALWAYS = """
WITH prior AS (SELECT count(*) AS n FROM {schema}.effects WHERE message_id = %(msg)s)
INSERT INTO {schema}.effects (message_id, order_id, amount, consumer)
VALUES (%(msg)s, %(order)s, %(amount)s, %(consumer)s)
RETURNING (SELECT n FROM prior)
"""
WHO = "SELECT consumer FROM {schema}.inbox WHERE message_id = %s"


class Consumer:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.consumer = f"{rt.name}.{args.incarnation}"
        self.dsn: str = args.dsn
        self.schema = sql.Identifier(args.schema)
        self.inbox = args.inbox == "on"
        self.claim_idle_ms: int = args.claim_idle_ms
        self.narrate = args.narrate == "on"
        self.stream: str = args.stream
        self.redis = redis_client(RedisTarget.from_url(args.redis), args.redis_timeout_ms / 1000)
        self.apply_sql = sql.SQL(APPLY_WITH_INBOX if self.inbox else APPLY_ALWAYS).format(schema=self.schema)
        self.conn: Conn | None = None
        self.crash_armed = False
        self.task: asyncio.Task[None] | None = None
        self.applied = self.duplicates = self.claimed = 0

    async def start(self) -> None:
        self.conn = await self._connect()
        with contextlib.suppress(redis_errors.ResponseError):  # BUSYGROUP: the run made it
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        self.task = asyncio.create_task(self.consume())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        await self.redis.aclose()

    async def _connect(self) -> Conn:
        return await connect(self.dsn, autocommit=True, name=self.consumer)

    def note(self, kind: str, f: str, msg: str, tick: str, note: str, **data: Any) -> None:
        if self.narrate:
            self.rt.note(self.rt.name, kind, f, key=msg, note=note, data={"msg": msg, "tick": tick, **data})

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("fault") != "crash-before-ack":
            return JSONResponse({"error": 'send {"fault": "crash-before-ack"}'}, 400)
        self.crash_armed = True
        return JSONResponse({"armed": {"fault": "crash-before-ack", "consumer": self.consumer}})

    # ------------------------------------------------------------------ the loop

    async def consume(self) -> None:
        next_claim = 0.0
        every_s = max(0.05, self.claim_idle_ms / 2000)
        while not self.rt.stopping.is_set():
            try:
                if time.monotonic() >= next_claim:
                    await self.claim()
                    next_claim = time.monotonic() + every_s
                reply: Any = await self.redis.xreadgroup(
                    GROUP, self.consumer, {self.stream: ">"}, count=BATCH, block=BLOCK_MS
                )
                for _, entries in reply or ():  # RESP2: [[stream, entries]]
                    await self.handle(entries)
            except (redis_errors.RedisError, psycopg.Error, OSError, TimeoutError) as exc:
                if self.narrate:
                    why = f"{type(exc).__name__}: {error_line(exc)}"
                    self.rt.note(
                        self.rt.name, "fail", "consume", note=f"{self.consumer}: {why}; again in 200 ms"
                    )
                if self.conn is None or self.conn.closed or self.conn.broken:
                    with contextlib.suppress(psycopg.Error, OSError):
                        self.conn = await self._connect()
                await asyncio.sleep(0.2)

    async def claim(self) -> None:
        """Take over the entries idle longer than ``claim_idle_ms`` (a dead consumer's)."""
        start: Any = "0-0"
        for _ in range(CLAIM_ROUNDS):
            reply = await self.redis.xautoclaim(
                self.stream, GROUP, self.consumer, self.claim_idle_ms, start_id=start, count=BATCH
            )
            start = reply[0]
            entries: list[Any] = [e for e in reply[1] if e is not None and e[1] is not None]
            for entry_id, fields in entries:
                msg = text(fields.get(b"id", b"?"))
                self.claimed += 1
                self.note(
                    "info", "claim", msg, "claim",
                    f"{msg}: entry {text(entry_id)} claimed by {self.consumer} (XAUTOCLAIM: pending "
                    f"over {self.claim_idle_ms} ms at a consumer that did not ack it)",
                    entry=text(entry_id),
                )  # fmt: skip
            if entries:
                await self.handle(entries)
            if text(start) == "0-0":
                return

    async def handle(self, entries: list[Any]) -> None:
        acks = []
        for entry_id, fields in entries:
            entry = text(entry_id)
            message = _message(fields)
            if message is None:
                if self.narrate:
                    self.rt.note(
                        self.rt.name, "info", "malformed", note=f"entry {entry}: not a message: acked"
                    )
                acks.append(entry_id)
                continue
            msg, order, amount = message
            self.rt.served(f"{msg} ({entry})")
            outcome = await self.apply(msg, order, amount, entry)
            if self.crash_armed and outcome != "duplicate":
                await self._crash(msg, entry, len(entries) - len(acks))
            acks.append(entry_id)
        if acks:
            await self.redis.xack(self.stream, GROUP, *acks)
        self._detail()

    async def apply(self, msg: str, order: str, amount: int, entry: str) -> str:
        """Apply one message: ``applied``, ``twice`` (again: no inbox) or ``duplicate``."""
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            conn = self.conn = await self._connect()
        params = {"msg": msg, "order": order, "amount": amount, "consumer": self.rt.name}
        cur = await conn.execute(self.apply_sql, params)
        row = await cur.fetchone()
        if row is None:  # the inbox had it
            who = await (await conn.execute(sql.SQL(WHO).format(schema=self.schema), (msg,))).fetchone()
            self.duplicates += 1
            by = f" (applied by {who[0]})" if who else ""
            self.note(
                "ok", "apply", msg, "duplicate", f"{msg}: inbox already has it{by}: skipped", entry=entry
            )
            return "duplicate"
        before = int(row[0])
        self.applied += 1
        if before:
            self.note(
                "ok", "apply", msg, "twice",
                f"{msg}: applied AGAIN ({before + 1} effects now; no inbox): order {order}, {amount}",
                entry=entry, consumer=self.rt.name,
            )  # fmt: skip
            return "twice"
        note = f"{msg}: applied order {order}, {amount}" + (" (inbox row with it)" if self.inbox else "")
        self.note("ok", "apply", msg, "applied", note, entry=entry, consumer=self.rt.name)
        return "applied"

    async def _crash(self, msg: str, entry: str, held: int) -> None:
        await self.rt.crash(
            msg,
            f"SIGKILL after applying {msg} (committed), before XACK: {held} entr(ies) left pending "
            f"at {self.consumer} (injected)",
            msg=msg, entry=entry, fault="consumer-crash",
        )  # fmt: skip

    def _detail(self) -> None:
        self.rt.detail = (
            f"{self.consumer}, inbox {'on' if self.inbox else 'off'}: {self.applied} applied, "
            f"{self.duplicates} duplicate(s) skipped, {self.claimed} claimed"
        )


def _message(fields: dict[bytes, bytes]) -> tuple[str, str, int] | None:
    """(message id, order id, amount) of an entry our relay wrote; None for anything else."""
    msg = text(fields.get(b"id", b""))
    try:
        payload = json.loads(fields.get(b"payload", b"{}"))
        order, amount = str(payload["order"]), int(payload["amount"])
    except (ValueError, KeyError, TypeError):
        return None
    return (msg, order, amount) if msg else None


def main() -> None:
    p = parser("service B: a consumer of the outbox stream, applying each message once (inbox)")
    p.add_argument("--dsn", required=True, help="B's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True, help="the schema holding inbox and effects")
    p.add_argument("--redis", required=True, help="the stream's Redis (URL)")
    p.add_argument("--stream", required=True, help="the stream key (the run's: outbox_stream_key)")
    p.add_argument("--inbox", choices=("on", "off"), default="on")
    p.add_argument("--claim-idle-ms", type=int, default=1000, help="claim entries pending this long")
    p.add_argument("--redis-timeout-ms", type=int, default=1000)
    p.add_argument("--narrate", choices=("on", "off"), default="on")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    consumer = Consumer(rt, args)
    routes = [Route("/_arm", consumer.arm, methods=["POST"])]
    run(rt.serve(routes, on_start=consumer.start, on_close=consumer.close))


if __name__ == "__main__":
    main()
