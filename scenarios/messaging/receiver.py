"""Service B of ``txn-best-effort``: the merchant that is told of payments — and must not
trust the telling to come once, or at all.

``POST /notify`` ``{"id", "amount", "attempt", ...}`` applies a payment once: in one
local transaction of B's PostgreSQL, its ``applied(id primary key)`` row and its
effect (``effects``: a row per application, with *no* unique key, so an effect applied
twice shows in the database). An id already applied is a repeat — the notifier sent
it again because an answer was lost or late — and answers ``success`` without
applying. ``INSERT … ON CONFLICT DO NOTHING`` makes the check and the mark one step,
so two deliveries at once (a retry while the first is still at work) cannot both
apply. With ``--dedup off`` (the naive receiver) the effect goes in first, always.

Reconciliation (``--reconcile on``): every ``--reconcile-every-ms``, B asks A
(``GET /orders?since=<cursor>``) for the payments placed since its cursor, keeps those
older than ``--reconcile-after-ms`` (the notifier's whole ladder and its timeouts: by
then it either told B or gave up) and applies what it lacks, with the same dedup. A
notification the notifier GAVE_UP on is marked RECONCILED in its hash (``state``,
``done_ms``, ``last``), in one script that changes it only from GAVE_UP. The cursor is
kept in B's database: a restarted B goes on where it stopped.

Faults, for a window of time (``POST /_arm`` ``{"fault", "for_ms", "delay_ms"}``):
``slow`` (every answer comes ``delay_ms`` after its work is done: past the notifier's
timeout) and ``lose-ack`` (the work is done, the answer is a 503: as if it were lost).
``receiver-down`` is the run's: it SIGKILLs this process and starts it again.

Narrated on lane ``B``: ``applied``, ``duplicate`` (a repeat skipped), ``twice`` (a
repeat applied again: only with ``--dedup off``), ``reconciled``, ``error``.

Error handling: a database error answers 503 (the notifier tries again); a failed
reconciliation pass (A unreachable, its answer malformed, a database or Redis error) is
narrated and tried again at the next one, its cursor unmoved.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
from psycopg import sql
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collectors.layouts import messaging
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client
from scenarios.kit.database import Pool, error_line
from scenarios.kit.http import Http
from scenarios.kit.process import ServiceRuntime, parser, run

RECEIVER = "B"
POOL = 6
FAULTS = ("slow", "lose-ack")

RECEIVER_DDL = """
CREATE TABLE applied (
    id text PRIMARY KEY, amount bigint NOT NULL, via text NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
CREATE TABLE effects (
    n bigserial PRIMARY KEY, id text NOT NULL, amount bigint NOT NULL, via text NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
CREATE TABLE reconciled (upto_ms bigint NOT NULL);
INSERT INTO reconciled VALUES (0);
"""

# A notification the notifier gave up on, found applied by reconciliation.
# KEYS[1] - the notification's hash; ARGV[1] - now (ms), ARGV[2] - last (in words)
# Returns 1 when it was GAVE_UP (now RECONCILED), else 0
MARK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'GAVE_UP' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'RECONCILED', 'done_ms', ARGV[1], 'last', ARGV[2])
return 1
"""


async def read_receiver(conn: Any, schema: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """B's ``applied`` rows and its ``effects`` rows, each ``[id, amount, via, t_ms]`` in order."""
    out: list[list[list[Any]]] = []
    for table, order in (("applied", "t_ms, id"), ("effects", "n")):
        cur = await conn.execute(
            sql.SQL("SELECT id, amount, via, t_ms FROM {}.{} ORDER BY " + order).format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        )
        out.append([[str(i), int(a), str(v), int(t)] for i, a, v, t in await cur.fetchall()])
    return out[0], out[1]


class Receiver:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.schema = sql.Identifier(args.schema)
        self.pool = Pool(args.dsn, POOL, rt.name)
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.dedup = args.dedup == "on"
        self.producer: str = args.producer
        self.reconcile = args.reconcile == "on"
        self.every_s = args.reconcile_every_ms / 1000
        self.after_ms: int = args.reconcile_after_ms
        self.http = Http(4)
        self.fault: dict[str, Any] = {}
        self.counts = {"applied": 0, "duplicate": 0, "twice": 0, "reconciled": 0}
        self.task: asyncio.Task[None] | None = None
        self.mark_script = self.redis.register_script(MARK)  # loaded again on NOSCRIPT

    async def start(self) -> None:
        await self.pool.open()
        if self.reconcile:
            self.task = asyncio.create_task(self.reconciler())
        self._detail()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.pool.close()
        await self.http.aclose()
        await self.redis.aclose()

    def _detail(self) -> None:
        done = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n) or "nothing yet"
        self.rt.detail = f"dedup {'on' if self.dedup else 'off'}; {done}"

    # ------------------------------------------------------------------ faults

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        fault = str(body.get("fault"))
        if fault not in FAULTS:
            return JSONResponse({"error": f"no fault {fault!r} (there are {', '.join(FAULTS)})"}, 400)
        until = time.monotonic() + int(body.get("for_ms", 0)) / 1000
        self.fault = {"fault": fault, "until": until, "delay_ms": int(body.get("delay_ms", 0))}
        return JSONResponse({"armed": fault})

    def _armed(self) -> dict[str, Any]:
        return self.fault if self.fault and time.monotonic() < self.fault["until"] else {}

    # ------------------------------------------------------------------ applying

    async def apply(self, order: str, amount: int, via: str) -> str:
        """``applied``, ``duplicate`` (applied before: nothing done) or ``twice`` (applied
        again: only without the dedup), in one local transaction."""
        ins_applied = sql.SQL(
            "INSERT INTO {}.applied (id, amount, via) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING "
            "RETURNING id"
        ).format(self.schema)
        ins_effect = sql.SQL("INSERT INTO {}.effects (id, amount, via) VALUES (%s, %s, %s)").format(
            self.schema
        )
        async with self.pool.connection() as conn, conn.transaction():
            if not self.dedup:  # naive: the effect first, whatever was applied before
                await conn.execute(ins_effect, (order, amount, via))
            first = await (await conn.execute(ins_applied, (order, amount, via))).fetchone()
            if first is None:
                return "duplicate" if self.dedup else "twice"
            if self.dedup:
                await conn.execute(ins_effect, (order, amount, via))
        return "applied"

    async def notify(self, request: Request) -> Response:
        try:
            body = await request.json()
            order, amount, attempt = str(body["id"]), int(body["amount"]), int(body.get("attempt", 0))
            if not order or amount <= 0:
                raise ValueError(body)
            order.encode()
        except (ValueError, KeyError, TypeError, UnicodeError):
            return JSONResponse({"error": "send {id, amount > 0, attempt}"}, 400)
        self.rt.served(f"notify {order} (attempt {attempt})")
        fault = self._armed()
        span = {"msg": order, "attempt": attempt}
        try:
            result = await self.apply(order, amount, f"notify#{attempt}")
        except (psycopg.Error, OSError) as exc:
            why = error_line(exc)
            note = f"{order} (attempt {attempt}): not applied: {why}"
            self.rt.note(RECEIVER, "fail", "notify", key=order, note=note, data=span | {"tick": "error"})
            return JSONResponse({"error": why}, 503)
        self.counts[result] += 1
        self._detail()
        said = {
            "applied": f"{order} applied: +{amount} (attempt {attempt})",
            "duplicate": f"inbox already has {order}: skipped (attempt {attempt}), answers success",
            "twice": f"{order} applied AGAIN: +{amount} (attempt {attempt}; no dedup)",
        }[result]
        if fault.get("fault") == "slow":
            said += f"; answers {fault['delay_ms']} ms late (slow, injected)"
        elif fault.get("fault") == "lose-ack":
            said += "; its answer is lost (injected): 503"
        kind = "info" if result == "twice" else "ok"
        self.rt.note(
            RECEIVER, kind, "notify", key=order, value=result, note=said, data=span | {"tick": result}
        )
        if fault.get("fault") == "slow":
            await asyncio.sleep(fault["delay_ms"] / 1000)
        if fault.get("fault") == "lose-ack":
            return JSONResponse({"error": "answer lost (injected)"}, 503)
        return PlainTextResponse("success")

    # ------------------------------------------------------------------ reconciliation

    async def reconciler(self) -> None:
        while not self.rt.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.stopping.wait(), self.every_s)
            if self.rt.stopping.is_set():
                return
            try:
                await self.reconcile_once()
            except (psycopg.Error, redis_errors.RedisError, OSError, KeyError, ValueError, TypeError) as exc:
                why = f"{type(exc).__name__}: {error_line(exc)}"
                note = f"reconciliation failed: {why}; again in {self.every_s:g}s"
                self.rt.note(RECEIVER, "info", "reconcile", note=note, data={"tick": "error"})

    async def reconcile_once(self) -> None:
        """One pass: A's payments placed since the cursor and old enough, applied if lacking."""
        upto = now_ms() - self.after_ms
        found = await self.pool.rows(sql.SQL("SELECT upto_ms FROM {}.reconciled").format(self.schema))
        since = int(str(found[0][0])) if found else 0
        if upto <= since:
            return
        reply = await self.http.get(self.producer, f"/orders?since={since}", 5)
        if not reply.ok:
            why = reply.error or f"{reply.status} {reply.body.get('error', '')}".strip()
            self.rt.note(
                RECEIVER, "info", "reconcile", note=f"A's query failed: {why}", data={"tick": "error"}
            )
            return
        orders = [o for o in reply.body.get("orders", []) if int(o["created_ms"]) < upto]
        held = await self._held([str(o["id"]) for o in orders])
        for o in orders:
            await self._reconcile(str(o["id"]), int(o["amount"]), str(o["id"]) in held)
        if reply.body.get("truncated") and orders:
            upto = int(orders[-1]["created_ms"])  # the rest in the next pass
        async with self.pool.connection() as conn:
            await conn.execute(sql.SQL("UPDATE {}.reconciled SET upto_ms = %s").format(self.schema), (upto,))

    async def _held(self, ids: list[str]) -> set[str]:
        """Which of these B has applied (what it lacks is what reconciliation applies)."""
        found = await self.pool.rows(
            sql.SQL("SELECT id FROM {}.applied WHERE id = ANY(%s)").format(self.schema), (ids,)
        )
        return {str(i) for (i,) in found}

    async def _reconcile(self, order: str, amount: int, held: bool) -> None:
        result = "duplicate" if held else await self.apply(order, amount, "reconcile")
        last = "reconciled: B held it already" if held else "reconciled: applied by B's query"
        marked = await self.mark_script(
            keys=[messaging.notification_key(self.rt.run_id, order)], args=[now_ms(), last]
        )
        if held and not marked:
            return  # applied by its notification, which was not given up on: nothing to say
        if not held:
            self.counts["reconciled"] += 1
            self._detail()
        said = {
            "applied": f"{order} applied by reconciliation (A's query): +{amount}",
            "duplicate": f"{order}: B held it already (reconciliation)",
            "twice": f"{order} applied AGAIN by reconciliation: +{amount} (it came meanwhile; no dedup)",
        }[result]
        if marked:
            said += "; its notification GAVE_UP → RECONCILED"
        span = {"msg": order, "via": "reconcile", "result": result, "marked": bool(marked)}
        tick = "twice" if result == "twice" else "reconciled"
        self.rt.note(
            RECEIVER, "ok", "reconcile", key=order, value=result, note=said, data=span | {"tick": tick}
        )


def main() -> None:
    p = parser("service B: applies each payment notification once; reconciles by querying A")
    p.add_argument("--dsn", required=True, help="B's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--redis", required=True, help="where the notifications live (Redis URL)")
    p.add_argument("--producer", required=True, help="A's address (host:port), for its query API")
    p.add_argument("--dedup", choices=("on", "off"), default="on")
    p.add_argument("--reconcile", choices=("on", "off"), default="on")
    p.add_argument("--reconcile-every-ms", type=int, default=1000)
    p.add_argument("--reconcile-after-ms", type=int, default=10_000)
    args = p.parse_args()
    rt = ServiceRuntime(args)
    receiver = Receiver(rt, args)
    routes = [
        Route("/notify", receiver.notify, methods=["POST"]),
        Route("/_arm", receiver.arm, methods=["POST"]),
    ]
    run(rt.serve(routes, on_start=receiver.start, on_close=receiver.close))


if __name__ == "__main__":
    main()
