"""Service A of ``txn-best-effort``: it takes payments, and tells whoever asked — best effort.

``POST /orders`` ``{"id", "amount", "notify_url"}`` places a payment in A's PostgreSQL
(``<schema>.orders``, committed on its own), *then* puts a notification on the queue
(``coordscope:notify:{<run>}:queue``, a Redis stream the notifier reads): the id, the
amount, the payment's time and where to send it. This is the best-effort pattern's
weak seam, and why it needs a query API: the payment is committed before anyone is
told, and nothing makes the telling certain. The receiver closes the gap by asking:

- ``GET /orders/<id>``: one payment (404 when A holds none);
- ``GET /orders?since=<ms>``: the payments placed at or after that time (A's wall
  clock), oldest first — what the receiver's reconciliation reads.

Narrated on lane ``A``: ``committed`` (the payment's transaction committed) and
``published`` (its notification queued, with the stream entry's id).

Error handling: a payment id A already holds answers 409 and queues nothing; a
database or Redis error answers 503 (a payment committed whose notification could not
be queued is said so on the lane: only reconciliation will bring it to the receiver).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.layouts.messaging import notify_queue_key
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.database import Pool, error_line
from scenarios.kit.process import ServiceRuntime, parser, run

PRODUCER = "A"
POOL = 4
QUERY_LIMIT = 5000
"""At most this many payments in one answer to ``GET /orders?since=`` (``truncated`` says so)."""

ORDERS_DDL = """
CREATE TABLE orders (
    id text PRIMARY KEY, amount bigint NOT NULL CHECK (amount > 0), status text NOT NULL,
    notify_url text NOT NULL, created_ms bigint NOT NULL
);
CREATE INDEX orders_created ON orders (created_ms);
"""


async def read_orders(conn: Any, schema: str) -> list[tuple[str, int, int]]:
    """(id, amount, created_ms) of every payment A holds, oldest first (read at the run's end)."""
    cur = await conn.execute(
        sql.SQL("SELECT id, amount, created_ms FROM {}.orders ORDER BY created_ms, id").format(
            sql.Identifier(schema)
        )
    )
    return [(str(i), int(a), int(c)) for i, a, c in await cur.fetchall()]


def _order(row: tuple[Any, ...]) -> dict[str, Any]:
    i, amount, status, created = row
    return {"id": str(i), "amount": int(amount), "status": str(status), "created_ms": int(created)}


class Producer:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.schema = sql.Identifier(args.schema)
        self.pool = Pool(args.dsn, POOL, rt.name)
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.queue = notify_queue_key(rt.run_id)
        self.placed = 0

    async def start(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    async def place(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            order, amount, url = str(body["id"]), int(body["amount"]), str(body["notify_url"])
            if not order or amount <= 0 or not url.startswith("http://"):
                raise ValueError(body)
            (order + url).encode()
        except (ValueError, KeyError, TypeError, UnicodeError):
            return JSONResponse({"error": "send {id, amount > 0, notify_url: http://...}"}, 400)
        self.rt.served(f"pay {order}")
        created = now_ms()
        span = {"msg": order}
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.orders (id, amount, status, notify_url, created_ms) "
                        "VALUES (%s, %s, 'PAID', %s, %s)"
                    ).format(self.schema),
                    (order, amount, url, created),
                )
        except pg_errors.UniqueViolation:
            return JSONResponse({"error": f"A holds a payment {order} already"}, 409)
        except (psycopg.Error, OSError) as exc:
            why = error_line(exc)
            note = f"{order}: not placed: {why}"
            self.rt.note(PRODUCER, "fail", "pay", key=order, note=note, data=span | {"tick": "error"})
            return JSONResponse({"error": why}, 503)
        self.placed += 1
        self.rt.detail = f"{self.placed} payment(s) placed"
        self.rt.note(
            PRODUCER, "ok", "pay", key=order, value=str(amount),
            note=f"{order} paid ({amount}): committed", data=span | {"tick": "committed", "amount": amount},
        )  # fmt: skip
        fields = {"id": order, "amount": str(amount), "notify_url": url, "created_ms": str(created)}
        try:
            entry = await self.redis.xadd(self.queue, fields)  # type: ignore[arg-type]
        except (redis_errors.RedisError, OSError) as exc:
            why = type(exc).__name__
            note = f"{order} committed, its notification NOT queued ({why}): only a query finds it"
            self.rt.note(PRODUCER, "fail", "queue", key=order, note=note, data=span | {"tick": "error"})
            return JSONResponse({"id": order, "created_ms": created, "error": note}, 503)
        entry_id = text(entry)
        self.rt.note(
            PRODUCER, "ok", "queue", key=order, value=entry_id,
            note=f"{order}: notification queued as {entry_id}", data=span | {"tick": "published"},
        )  # fmt: skip
        return JSONResponse({"id": order, "created_ms": created, "entry": entry_id}, 201)

    async def one(self, request: Request) -> JSONResponse:
        order = request.path_params["id"]
        self.rt.served(f"query {order}")
        try:
            found = await self.pool.rows(
                sql.SQL("SELECT id, amount, status, created_ms FROM {}.orders WHERE id = %s").format(
                    self.schema
                ),
                (order,),
            )
        except (psycopg.Error, OSError) as exc:
            return JSONResponse({"error": error_line(exc)}, 503)
        if not found:
            return JSONResponse({"error": f"A holds no payment {order}"}, 404)
        return JSONResponse(_order(found[0]))

    async def since(self, request: Request) -> JSONResponse:
        raw = request.query_params.get("since", "0")
        if not raw.isdigit():
            return JSONResponse({"error": "since must be a time in ms (a whole number)"}, 400)
        self.rt.served(f"query since {raw}")
        try:
            rows = await self.pool.rows(
                sql.SQL(
                    "SELECT id, amount, status, created_ms FROM {}.orders WHERE created_ms >= %s "
                    "ORDER BY created_ms, id LIMIT %s"
                ).format(self.schema),
                (int(raw), QUERY_LIMIT + 1),
            )
        except (psycopg.Error, OSError) as exc:
            return JSONResponse({"error": error_line(exc)}, 503)
        orders = [_order(r) for r in rows[:QUERY_LIMIT]]
        return JSONResponse({"orders": orders, "truncated": len(rows) > QUERY_LIMIT})


def main() -> None:
    p = parser("service A: places payments in PostgreSQL, queues their notifications, answers queries")
    p.add_argument("--dsn", required=True, help="A's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--redis", required=True, help="where the notification queue lives (Redis URL)")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    producer = Producer(rt, args)
    routes = [
        Route("/orders", producer.place, methods=["POST"]),
        Route("/orders", producer.since, methods=["GET"]),
        Route("/orders/{id}", producer.one, methods=["GET"]),
    ]
    run(rt.serve(routes, on_start=producer.start, on_close=producer.close))


if __name__ == "__main__":
    main()
