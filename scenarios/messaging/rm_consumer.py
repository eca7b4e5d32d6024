"""Consumer B of ``txn-reliable-message``: it reads the committed messages of its topic
and applies each one's effect in its own PostgreSQL, deduplicated by a Redis mark — the
seed's own remedy.

It reads the topic's stream (``topic_key(run, topic)``) in the consumer group
:data:`GROUP` as consumer ``B`` (its service name, the same in every incarnation), and
acknowledges an entry (``XACK``) only once it is done with it. An entry delivered and not
acknowledged — B died in between — stays pending for B; each start of B first reads its
own pending entries (``XREADGROUP ... 0``): those are redeliveries.

The effect is a row of ``effects`` (message, order, amount, consumer), with NO unique
key on the message on purpose: a message applied twice shows in the database itself.
With ``--dedup on`` the mark ``done_key(run, id)`` guards it, in this order:

1. ``GET`` the mark: there already -> the message was applied: skipped (``duplicate``),
   acknowledged;
2. the effect, in one PostgreSQL transaction (committed);
3. ``SET`` the mark (with a TTL: ``--mark-ttl-ms``);
4. ``XACK``.

The window this leaves open: the effect committed (2) and B dead before the mark is set
(3) — the message is pending, the mark absent, and the redelivery applies it again. The
effect and the mark live in two stores, so no order of the two closes it: marking
first (a ``SET NX`` claim) opens the opposite window, a message marked and never
applied (lost, for good). Only the effect and its memory in one transaction close it:
an inbox table beside ``effects`` (what ``txn-outbox`` does). The ``consumer-fail``
fault strikes after the mark (3), before the ack (4): the mark turns the redelivery into
a no-op. With ``--dedup off`` there is no mark, and the redelivery applies the effect
again (narrated ``twice``: B counts the message's rows as it inserts).

``POST /_arm {id}`` arms that crash (SIGKILL) for one message.

Error handling
--------------
A Redis or PostgreSQL error while handling an entry leaves it unacknowledged: B narrates
the error, and after a short pause reads its pending entries again. An entry that is
not a message of ours is acknowledged and narrated, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, cast

import psycopg
from psycopg import sql
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.layouts import messaging
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.database import connect, error_line
from scenarios.kit.process import ServiceRuntime, parser, run

GROUP = "b"
"""The consumer group B reads the topic in (made by the run before anything is delivered)."""
DDL = """
CREATE TABLE effects (
    n bigserial PRIMARY KEY, msg_id text NOT NULL, order_id text NOT NULL, amount bigint NOT NULL,
    consumer text NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
"""
"""B's table: one row per message applied — no unique key, so a double apply shows."""
BATCH = 32
BLOCK_MS = 100
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Consumer:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.run_id = rt.run_id
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.dsn: str = args.dsn
        self.schema = sql.Identifier(args.schema)
        self.stream = messaging.topic_key(self.run_id, args.topic)
        self.dedup = args.dedup == "on"
        self.mark_ttl_ms: int = args.mark_ttl_ms
        self.conn: Conn | None = None
        self.armed: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.counts = {"applied": 0, "duplicate": 0, "twice": 0}

    async def start(self) -> None:
        self.task = asyncio.create_task(self.consume())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.conn is not None:
            await self.conn.close()
        await self.redis.aclose()

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.armed.add(str(body["id"]))
        return JSONResponse({"armed": sorted(self.armed)})

    def note(self, kind: str, msg: str, note: str, tick: str | None = None, **data: Any) -> None:
        detail = {"msg": msg, **({"tick": tick} if tick else {}), **data}
        self.rt.note(self.rt.name, kind, "apply", key=msg, note=f"{msg}: {note}", data=detail)

    # ------------------------------------------------------------------ the loop

    async def consume(self) -> None:
        start: str | None = "0"  # first what was delivered to B before and never acknowledged
        while not self.rt.stopping.is_set():
            try:
                reply: Any = await self.redis.xreadgroup(
                    GROUP, self.rt.name, {self.stream: start or ">"}, count=BATCH,
                    block=None if start else BLOCK_MS,
                )  # fmt: skip
                entries = [e for _, got in reply or () for e in got]  # RESP2: [[stream, entries]]
                if start and not entries:
                    start = None  # the backlog is done: new messages from now on
                for entry_id, fields in entries:
                    await self.handle(text(entry_id), fields, redelivered=start is not None)
                    if start:
                        start = text(entry_id)
            except (redis_errors.RedisError, psycopg.Error, OSError) as exc:
                self.rt.note(self.rt.name, "info", "error", note=f"{type(exc).__name__}: {error_line(exc)}")
                start = "0"  # what failed is pending: read it again
                await asyncio.sleep(0.2)

    async def handle(self, entry: str, fields: dict[bytes, bytes] | None, redelivered: bool) -> None:
        msg = text((fields or {}).get(b"id", b""))
        try:
            body = json.loads((fields or {}).get(b"body", b""))
            order, amount = str(body["order"]), int(body["amount"])
        except (ValueError, KeyError, TypeError):
            self.rt.note(
                self.rt.name, "info", "malformed", note=f"entry {entry} is not a message of ours: acked"
            )
            await self.redis.xack(self.stream, GROUP, entry)
            return
        self.rt.served(f"{msg} ({entry})")
        again = " (redelivered: delivered before, never acknowledged)" if redelivered else ""
        mark = messaging.done_key(self.run_id, msg)
        if self.dedup:
            by = await self.redis.get(mark)
            if by is not None:
                self._count("duplicate")
                note = f"its mark is set ({text(by)}): applied before, skipped{again}"
                self.note("ok", msg, note, "duplicate", entry=entry, redelivered=redelivered)
                await self.redis.xack(self.stream, GROUP, entry)
                return
        rows = await self.apply(msg, order, amount)
        if self.dedup:
            await self.redis.set(mark, f"{self.rt.name} {entry}", px=self.mark_ttl_ms)
        tick = "applied" if rows == 1 else "twice"
        self._count(tick)
        what = f"effect applied: order {order}, {amount}" + (
            f" — its row number {rows} for this message: APPLIED AGAIN" if rows > 1 else ""
        )
        self.note("ok", msg, what + again, tick, entry=entry, rows=rows, redelivered=redelivered)
        if msg in self.armed:
            await self._crash(msg, entry)
        await self.redis.xack(self.stream, GROUP, entry)

    async def apply(self, msg: str, order: str, amount: int) -> int:
        """The effect, committed; how many rows the message has now (1: the first time)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = cast(Conn, await connect(self.dsn, autocommit=True, name=self.rt.name))
        async with self.conn.transaction():
            await self.conn.execute(
                sql.SQL(
                    "INSERT INTO {}.effects (msg_id, order_id, amount, consumer) VALUES (%s, %s, %s, %s)"
                ).format(self.schema),
                (msg, order, amount, self.rt.name),
            )
            cur = await self.conn.execute(
                sql.SQL("SELECT count(*) FROM {}.effects WHERE msg_id = %s").format(self.schema), (msg,)
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 1

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        self.rt.detail = f"dedup {'on' if self.dedup else 'off'}; " + ", ".join(
            f"{n} {k}" for k, n in self.counts.items()
        )

    async def _crash(self, msg: str, entry: str) -> None:
        await self.rt.crash(
            msg,
            f"{msg}: SIGKILL (injected) after its effect"
            + (" and its mark" if self.dedup else "") + f", before XACK of {entry}",
            msg=msg, fault="consumer-fail", entry=entry,
        )  # fmt: skip


def main() -> None:
    p = parser("consumer B: applies committed messages once, deduplicated by a Redis mark")
    p.add_argument("--redis", required=True, help="where the topic's stream and the marks live (Redis URL)")
    p.add_argument("--dsn", required=True, help="B's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--topic", default="orders")
    p.add_argument("--dedup", choices=("on", "off"), default="on")
    p.add_argument("--mark-ttl-ms", type=int, default=600_000)
    args = p.parse_args()
    rt = ServiceRuntime(args)
    consumer = Consumer(rt, args)
    routes = [Route("/_arm", consumer.arm, methods=["POST"])]
    run(rt.serve(routes, on_start=consumer.start, on_close=consumer.close))


if __name__ == "__main__":
    main()
