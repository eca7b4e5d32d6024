"""The outbox relay of ``txn-outbox``: publishes A's unsent outbox rows to a Redis stream,
then marks them sent.

One round, in one PostgreSQL transaction on A's database:

1. ``SELECT … WHERE sent_at IS NULL ORDER BY created_at, id LIMIT <batch> FOR UPDATE
   SKIP LOCKED`` — the oldest unsent rows, locked (a second relay would skip them, not
   wait for them);
2. ``XADD`` each to the stream (``collectors.layouts.messaging.outbox_stream_key``; fields
   ``id``, ``type``, ``aggregateid``, ``payload``), pipelined;
3. ``UPDATE … SET sent_at = clock_timestamp()`` for those rows; COMMIT.

Publishing and marking cannot be one atomic step — the stream and the table live in two
stores — so the relay is *at least once*: a relay that dies between 2 and 3 leaves its
rows unsent (its transaction dies with its connection) and publishes them again when it
is back. An ``XADD`` whose reply timed out may still have landed (a stopped Redis reads
it when it runs again): the relay retries it, and the stream holds it twice. Either way
the duplicate is B's inbox's to drop (:mod:`scenarios.messaging.outbox_consumer`).

When it looks: ``--mode poll`` every ``--poll-ms``; ``--mode notify`` when A's ``NOTIFY``
arrives on a ``LISTEN`` connection (sent by A's transaction, delivered on its commit),
and every ``--safety-ms`` all the same — notifications sent while the relay was down, or
while its listening connection was broken, are lost for good, and the rows are not. A
full batch is followed at once by the next one.

Faults, armed with ``POST /_arm`` ``{"fault": "crash-after-publish", "msg"}``: when a
round's ``XADD`` of that message has been answered, the relay narrates it, flushes its
narration and SIGKILLs itself before marking anything sent.

Error handling: a Redis or PostgreSQL error (a broker that stops answering times out after
``--redis-timeout-ms``) rolls the round back: nothing is marked, the rows stay unsent and
are tried again after a backoff (100 ms doubling to 1 s), for as long as the relay runs.
Narration (lane ``relay``, batched): ``published`` and ``marked`` per message, ``error``
per failed round (its oldest message as ``msg``, all of them as ``msgs``).
"""

from __future__ import annotations

import asyncio
import contextlib
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

BATCH = 100
BACKOFF_MS = (100, 200, 400, 800, 1000)
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

SELECT_UNSENT = (
    "SELECT id, type, aggregateid, payload::text FROM {}.outbox WHERE sent_at IS NULL "
    "ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED"
)
MARK_SENT = "UPDATE {}.outbox SET sent_at = clock_timestamp() WHERE id = ANY(%s)"


class Relay:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.dsn: str = args.dsn
        self.schema = sql.Identifier(args.schema)
        self.mode: str = args.mode
        self.channel: str = args.channel
        self.poll_s = args.poll_ms / 1000
        self.safety_s = args.safety_ms / 1000
        self.narrate = args.narrate == "on"
        self.stream: str = args.stream
        # a broker that stops answering is an error within the timeout, narrated, and retried by us
        self.redis = redis_client(RedisTarget.from_url(args.redis), args.redis_timeout_ms / 1000)
        self.conn: Conn | None = None
        self.wake = asyncio.Event()
        self.armed: set[str] = set()
        self.trying: list[str] = []
        """The messages of the round under way (named when it fails)."""
        self.tasks: list[asyncio.Task[None]] = []
        self.published = self.marked = self.errors = 0

    async def start(self) -> None:
        self.conn = await self._connect()
        if self.mode == "notify":
            self.tasks.append(asyncio.create_task(self.listen()))
        self.tasks.append(asyncio.create_task(self.loop()))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        await self.redis.aclose()

    async def _connect(self) -> Conn:
        return await connect(self.dsn, autocommit=True, name=self.rt.name)

    def note(self, kind: str, f: str, msg: str, tick: str, note: str, **data: Any) -> None:
        if self.narrate:
            self.rt.note(self.rt.name, kind, f, key=msg, note=note, data={"msg": msg, "tick": tick, **data})

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("fault") != "crash-after-publish" or not body.get("msg"):
            return JSONResponse({"error": 'send {"fault": "crash-after-publish", "msg": "<id>"}'}, 400)
        self.armed.add(str(body["msg"]))
        return JSONResponse({"armed": {"fault": "crash-after-publish", "msg": str(body["msg"])}})

    # ------------------------------------------------------------------ when to look

    async def loop(self) -> None:
        failures = 0
        while not self.rt.stopping.is_set():
            try:
                done = await self.publish()
                failures = 0
            except (redis_errors.RedisError, psycopg.Error, OSError, TimeoutError) as exc:
                wait_ms = BACKOFF_MS[min(failures, len(BACKOFF_MS) - 1)]
                failures += 1
                self.errors += 1
                self._error(exc, wait_ms)
                await self._reconnect_if_broken()
                await asyncio.sleep(wait_ms / 1000)
                continue
            if done < BATCH:  # a full batch: there may be more at once
                await self._idle()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.poll_s if self.mode == "poll" else self.safety_s)
        self.wake.clear()

    async def listen(self) -> None:
        """Wake the loop on every notification on the channel (reconnecting when the
        connection breaks: what was sent meanwhile is lost — the safety poll finds it)."""
        while not self.rt.stopping.is_set():
            try:
                async with await self._connect() as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.wake.set()  # whatever committed before we listened
                    async for _ in conn.notifies():
                        self.wake.set()
            except (psycopg.Error, OSError) as exc:
                self.rt.note(self.rt.name, "info", "listen", note=f"LISTEN lost: {error_line(exc)}")
                await asyncio.sleep(0.5)

    async def _reconnect_if_broken(self) -> None:
        if self.conn is None or self.conn.closed or self.conn.broken:
            with contextlib.suppress(psycopg.Error, OSError):
                self.conn = await self._connect()

    # ------------------------------------------------------------------ one round

    async def publish(self) -> int:
        """Publish the oldest unsent rows and mark them sent (one transaction); how many."""
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            raise OSError("no connection to A's database")
        async with conn.transaction():
            cur = await conn.execute(sql.SQL(SELECT_UNSENT).format(self.schema), (BATCH,))
            rows = [(str(i), str(t), str(a), str(p)) for i, t, a, p in await cur.fetchall()]
            if not rows:
                return 0
            self.trying = [r[0] for r in rows]
            pipe = self.redis.pipeline(transaction=False)
            for msg, kind, aggregate, payload in rows:
                pipe.xadd(
                    self.stream, {"id": msg, "type": kind, "aggregateid": aggregate, "payload": payload}
                )
            entries = [text(e) for e in await pipe.execute()]
            self.published += len(rows)
            for (msg, *_), entry in zip(rows, entries, strict=True):
                self.note("ok", "publish", msg, "published", f"{msg}: published as {entry}", entry=entry)
            await self._crash_point([r[0] for r in rows])
            await conn.execute(sql.SQL(MARK_SENT).format(self.schema), ([r[0] for r in rows],))
        self.trying = []
        self.marked += len(rows)
        for msg, *_ in rows:
            self.note("ok", "mark", msg, "marked", f"{msg}: outbox row marked sent")
        self._detail()
        return len(rows)

    async def _crash_point(self, published: list[str]) -> None:
        hit = [m for m in published if m in self.armed]
        if not hit:
            return
        unmarked = ", ".join(published) if len(published) <= 8 else f"{len(published)} rows"
        await self.rt.crash(
            hit[0],
            f"SIGKILL after publishing {hit[0]}, before marking {unmarked} sent (injected)",
            msg=hit[0], msgs=published, fault="relay-crash-after-publish",
        )  # fmt: skip

    def _error(self, exc: BaseException, wait_ms: int) -> None:
        trying, self.trying = self.trying, []
        why = f"{type(exc).__name__}: {error_line(exc)}"
        if trying:
            what = f"{trying[0]}" + (f"…{trying[-1]} ({len(trying)} rows)" if len(trying) > 1 else "")
            note = f"{what}: round failed ({why}): rolled back, nothing marked; retry in {wait_ms} ms"
            if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
                note += " (an XADD that timed out may still land: a duplicate)"
            self.note("fail", "publish", trying[0], "error", note, msgs=trying)
        elif self.narrate:
            self.rt.note(self.rt.name, "fail", "publish", note=f"round failed ({why}); retry in {wait_ms} ms")
        self._detail()

    def _detail(self) -> None:
        self.rt.detail = f"{self.mode}: {self.published} published, {self.marked} marked sent" + (
            f", {self.errors} failed round(s)" if self.errors else ""
        )


def main() -> None:
    p = parser("the outbox relay: unsent outbox rows -> XADD to a Redis stream -> marked sent")
    p.add_argument("--dsn", required=True, help="A's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True, help="the schema holding A's outbox table")
    p.add_argument("--redis", required=True, help="the stream's Redis (URL)")
    p.add_argument("--stream", required=True, help="the stream key (the run's: outbox_stream_key)")
    p.add_argument("--mode", choices=("poll", "notify"), default="poll")
    p.add_argument("--channel", default="coordscope_outbox", help="the LISTEN channel (mode notify)")
    p.add_argument("--poll-ms", type=int, default=100, help="mode poll: how often it looks")
    p.add_argument("--safety-ms", type=int, default=1000, help="mode notify: how often it looks anyway")
    p.add_argument("--redis-timeout-ms", type=int, default=1000, help="an XADD unanswered this long fails")
    p.add_argument("--narrate", choices=("on", "off"), default="on")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    relay = Relay(rt, args)
    run(rt.serve([Route("/_arm", relay.arm, methods=["POST"])], on_start=relay.start, on_close=relay.close))


if __name__ == "__main__":
    main()
