"""Service A of ``txn-outbox``: an order and its message, written in ONE local transaction.

``POST /order`` ``{"id", "amount"}`` inserts the business row (``orders``) and the message
row (``outbox``, Debezium's columns plus ``sent_at``) into A's PostgreSQL schema, both
or neither: that is the whole remedy. Nothing here talks to the broker — a message that
exists is one whose order committed, and the relay (:mod:`scenarios.messaging.relay`)
publishes it later, however long the broker is away. With ``--relay notify`` the same
transaction also says ``NOTIFY <channel>, '<id>'``: PostgreSQL delivers a notification
only when its transaction commits, so the relay is woken for committed rows only.

The happy path is one statement (data-modifying CTEs: the order, its message and the
notification), which in autocommit mode is one transaction and one round trip. The
answer carries ``committed_ms`` (wall clock, after the commit returned), so a benchmark
can measure commit → effect from the stores (B's ``effects.applied_at``).

Faults, armed per message with ``POST /_arm`` ``{"fault": "rollback", "msg"}``: that
order's transaction inserts both rows, then rolls back, as a business rule failing
half-way would: the client is answered 409 ``rolled-back``, and nothing may ever be
published for it.

Narration (on lane ``A``, not awaited: batched with :meth:`ServiceRuntime.note`):
``committed`` and ``rolled-back`` ticks, ``error`` when the database failed (503).
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from psycopg import sql
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scenarios.kit.database import Pool, error_line
from scenarios.kit.process import ServiceRuntime, parser, run

POOL = 8
EVENT_TYPE = "OrderPlaced"
AGGREGATE = "order"
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# One statement, one transaction: the order, its message and (``relay=notify``) the
# notification, delivered by PostgreSQL only if this commits.
# {schema}.orders / {schema}.outbox; %(id)s, %(amount)s, %(payload)s, %(channel)s
PLACE = """
WITH o AS (
    INSERT INTO {schema}.orders (id, amount) VALUES (%(id)s, %(amount)s) RETURNING id
), m AS (
    INSERT INTO {schema}.outbox (id, aggregatetype, aggregateid, type, payload)
    SELECT o.id, %(aggregate)s, o.id, %(type)s, %(payload)s::jsonb FROM o RETURNING id
)
SELECT m.id{notify} FROM m
"""


class BusinessRuleFailed(Exception):
    """The injected failure that rolls an order's transaction back."""


class Producer:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.schema = sql.Identifier(args.schema)
        self.channel: str = args.channel
        self.notify = args.relay == "notify"
        self.narrate = args.narrate == "on"
        self.pool = Pool(args.dsn, POOL, rt.name)
        self.armed: dict[str, str] = {}
        """message id -> fault."""
        self.committed = self.rolled_back = 0
        notify = ", pg_notify(%(channel)s, m.id)" if self.notify else ""
        self.place_sql = sql.SQL(PLACE.replace("{notify}", notify)).format(schema=self.schema)

    async def start(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    def note(self, kind: str, f: str, msg: str, tick: str, note: str, **data: Any) -> None:
        if self.narrate:
            self.rt.note(self.rt.name, kind, f, key=msg, note=note, data={"msg": msg, "tick": tick, **data})

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("fault") != "rollback" or not body.get("msg"):
            return JSONResponse({"error": 'send {"fault": "rollback", "msg": "<order id>"}'}, 400)
        self.armed[str(body["msg"])] = "rollback"
        return JSONResponse({"armed": {"fault": "rollback", "msg": str(body["msg"])}})

    async def order(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            msg, amount = str(body["id"]), int(body["amount"])
            if not msg or len(msg) > 64 or amount <= 0:
                raise ValueError(body)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {id: a short text, amount > 0}"}, 400)
        self.rt.served(f"order {msg}")
        params = {
            "id": msg,
            "amount": amount,
            "aggregate": AGGREGATE,
            "type": EVENT_TYPE,
            "payload": json.dumps({"order": msg, "amount": amount}),
            "channel": self.channel,
        }
        try:
            async with self.pool.connection() as conn:
                if self.armed.pop(msg, None) == "rollback":
                    return await self._roll_back(conn, msg, params)
                await conn.execute(self.place_sql, params)
        except psycopg.errors.UniqueViolation:
            return JSONResponse({"error": f"order {msg} exists already", "outcome": "exists"}, 409)
        except (psycopg.Error, OSError) as exc:
            why = error_line(exc)
            self.note("fail", "order", msg, "error", f"{msg}: not committed: {why}")
            return JSONResponse({"error": why}, 503)
        committed_ms = time.time() * 1000
        self.committed += 1
        self._detail()
        how = " and NOTIFY" if self.notify else ""
        self.note("ok", "order", msg, "committed", f"{msg}: order {amount} and its outbox row{how} committed")
        return JSONResponse({"id": msg, "outcome": "committed", "committed_ms": committed_ms})

    async def _roll_back(self, conn: Conn, msg: str, params: dict[str, Any]) -> JSONResponse:
        """Both rows inserted, then the business rule fails: ROLLBACK takes both away."""
        try:
            async with conn.transaction():
                await conn.execute(self.place_sql, params)
                raise BusinessRuleFailed(msg)
        except BusinessRuleFailed:
            pass
        self.rolled_back += 1
        self._detail()
        self.note(
            "fail", "order", msg, "rolled-back",
            f"{msg}: order and outbox row inserted, then rolled back (injected business failure)",
            fault="rollback",
        )  # fmt: skip
        return JSONResponse({"id": msg, "outcome": "rolled-back"}, 409)

    def _detail(self) -> None:
        self.rt.detail = f"{self.committed} committed, {self.rolled_back} rolled back"


def main() -> None:
    p = parser("service A: an order and its outbox row in one PostgreSQL transaction")
    p.add_argument("--dsn", required=True, help="A's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True, help="the schema holding orders and outbox")
    p.add_argument("--relay", choices=("poll", "notify"), default="poll", help="notify: NOTIFY on commit")
    p.add_argument("--channel", default="coordscope_outbox", help="the NOTIFY channel (relay=notify)")
    p.add_argument("--narrate", choices=("on", "off"), default="on")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    producer = Producer(rt, args)
    routes = [
        Route("/order", producer.order, methods=["POST"]),
        Route("/_arm", producer.arm, methods=["POST"]),
    ]
    run(rt.serve(routes, on_start=producer.start, on_close=producer.close))


if __name__ == "__main__":
    main()
