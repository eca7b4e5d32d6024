"""A payment service instance: a Starlette app under uvicorn, a process of its own.

``POST /pay`` with ``{"order_id", "amount", "request_id", "client"}`` charges the
order — a row in the PostgreSQL ledger — behind the guard the run chose:

- ``none``: every request charges;
- ``local-set``: a set of the order ids this process has charged (the seed's
  "on one machine"); another instance knows nothing of it;
- ``db-unique``: the ledger's unique key on the order id refuses a second
  charge; the instance answers with the first one;
- ``redis-mark``: the mark of :mod:`scenarios.idempotency.marks` — 409 while
  another instance holds the claim, the stored answer replayed after, 422 for
  the same id with another amount.

Replies: 200 ``{"charge_id", "order_id", "amount", "instance", "replayed"}``,
409 (in flight), 422 (another payload), 503 (the store failed).

The run arms faults at exact points of the protocol with ``POST /_arm``:
``crash_at`` (``after-claim``: the guard passed, nothing charged yet;
``after-charge``: charged, the mark not completed) makes this process SIGKILL
itself right there; ``slow_ms`` stretches the next request's work (the
payment provider is slow); ``lose_reply_ms`` holds the next reply back that
long after the work is done (the client gives up: to it the reply is lost).

Every step is narrated into the run's history on this instance's lane:
``handle`` spans, a tick per charge, replay, 409 and 422.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from redis import exceptions as redis_errors
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.targets import RedisTarget
from scenarios.idempotency import ledger
from scenarios.idempotency.marks import Marks, fingerprint, mark_key
from scenarios.kit.process import ServiceRuntime, parser

GUARDS = ("none", "local-set", "db-unique", "redis-mark")
POOL = 4


class PaymentService:
    def __init__(self, runtime: ServiceRuntime, args: Any) -> None:
        self.rt = runtime
        self.name = runtime.name
        self.guard: str = args.guard
        self.schema: str = args.schema
        self.dsn: str = args.pg
        self.work_s = args.work_ms / 1000
        self.narrate = args.narrate == "on"
        self.marks = Marks(RedisTarget.from_url(args.redis), self.name, args.lease_ms, args.mark_ttl_ms)
        self.seen: dict[str, dict[str, Any]] = {}
        """local-set: the answers this process gave, by order id."""
        self.armed: dict[str, dict[str, Any]] = {}
        """Faults the run set up, by the id of the request they are for."""
        self.pool: asyncio.Queue[psycopg.AsyncConnection[tuple[object, ...]]] = asyncio.Queue()

    async def start(self) -> None:
        for _ in range(POOL):
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=False, connect_timeout=5)
            self.pool.put_nowait(conn)

    async def close(self) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()
        await self.marks.aclose()

    async def record(self, kind: str, f: str, **kw: Any) -> None:
        if self.narrate:
            await self.rt.record(self.name, kind, f, **kw)

    # ------------------------------------------------------------------ the fault points

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        fault = {k: v for k, v in body.items() if k in ("crash_at", "slow_ms", "lose_reply_ms")}
        self.armed[str(body.get("request", ""))] = fault
        return JSONResponse({"armed": fault})

    async def _point(self, where: str, order: str, armed: dict[str, Any]) -> None:
        """A protocol point: die right here if the run armed a crash for it."""
        if armed.get("crash_at") == where:
            await self.rt.crash(order, f"SIGKILL {where}")

    # ------------------------------------------------------------------ POST /pay

    async def pay(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            order = str(body["order_id"])
            amount = int(body["amount"])
            request_id = str(body.get("request_id", ""))
            client = str(body.get("client", ""))
            for text in (order, request_id, client):
                text.encode()  # what goes to Redis and PostgreSQL must be text they can take
        except (ValueError, KeyError, TypeError, UnicodeError):
            return JSONResponse({"error": "send {order_id, amount, request_id, client}"}, status_code=400)
        self.rt.served(f"pay {order} from {client}")
        span = {"span": request_id}  # this instance may serve several requests at once
        await self.record("invoke", "handle", key=order, note=f"{request_id} from {client}", data=span)
        armed = self.armed.pop(request_id, {})
        try:
            code, answer = await self._pay(order, amount, request_id, armed)
        except (psycopg.Error, redis_errors.RedisError, OSError) as exc:
            code, answer = 503, {"error": f"{type(exc).__name__}: {exc}"[:200]}
        await self.record(
            "ok" if code < 300 else "fail", "handle", key=order, note=f"{code}", data={"code": code, **span}
        )
        lose = armed.get("lose_reply_ms")
        if lose:
            await asyncio.sleep(int(lose) / 1000)  # the client has given up waiting: its reply is lost
        return JSONResponse(
            answer,
            status_code=code,
            headers={"Idempotent-Replayed": "true"} if answer.get("replayed") else {},
        )

    async def _pay(
        self, order: str, amount: int, request_id: str, armed: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        key = mark_key(self.rt.run_id, order)
        if self.guard == "local-set" and order in self.seen:
            await self.record("ok", "replay", key=order, note="seen here before", data={"tick": "replay"})
            return 200, {**self.seen[order], "replayed": True}
        if self.guard == "redis-mark":
            claim = await self.marks.claim(key, fingerprint(order, amount), request_id)
            if claim.outcome == "in-flight":
                note = f"409: {claim.a} holds the claim ({claim.b} ms of lease left)"
                await self.record("fail", "claim", key=key, note=note, data={"tick": "conflict", "code": 409})
                return 409, {"error": "a request with this id is in flight", "owner": claim.a}
            if claim.outcome == "mismatch":
                await self.record(
                    "fail", "claim", key=key, note="422: another payload", data={"tick": "mismatch"}
                )
                return 422, {"error": "this id was used with another payload"}
            if claim.outcome == "replay":
                await self.record("ok", "replay", key=key, note=f"stored {claim.a}", data={"tick": "replay"})
                return int(claim.a or 200), {**json.loads(claim.b or "{}"), "replayed": True}
            note = (
                f"taken over from {claim.a}: its lease ended" if claim.outcome == "taken-over" else "claimed"
            )
            await self.record("ok", "claim", key=key, note=note, data={"outcome": claim.outcome})
        await self._point("after-claim", order, armed)
        slow = armed.get("slow_ms")
        await asyncio.sleep((int(slow) if slow else 0) / 1000 + self.work_s)  # the payment provider's work
        conn = await self.pool.get()
        try:
            done = await ledger.charge(
                conn, self.schema, order, amount, self.name, request_id, self.rt.narrator.t_ms()
            )
        except ledger.AlreadyCharged as exc:
            first = exc.charge
            answer = _answer(first)
            await self.record(
                "ok", "replay", key=order, note=f"the unique key refused a second charge: #{first.charge_id}",
                data={"tick": "replay", "charge_id": first.charge_id},
            )  # fmt: skip
            return 200, {**answer, "replayed": True}
        except BaseException:
            await conn.rollback()
            if self.guard == "redis-mark":
                await self.marks.release(key, request_id)  # nothing was charged: a retry may go ahead
            raise
        finally:
            self.pool.put_nowait(conn)
        answer = _answer(done)
        await self.record(
            "ok",
            "charge",
            key=order,
            value=str(done.charge_id),
            note=f"charged #{done.charge_id} ({amount})",
            data={"tick": "charge", "charge_id": done.charge_id, "request": request_id},
        )
        await self._point("after-charge", order, armed)
        if self.guard == "redis-mark" and not await self.marks.complete(
            key, request_id, 200, json.dumps(answer)
        ):
            await self.record(
                "info", "complete", key=key, note="the claim was taken over meanwhile: not ours"
            )
        if self.guard == "local-set":
            self.seen[order] = answer
        return 200, answer


def _answer(c: ledger.Charge) -> dict[str, Any]:
    return {"charge_id": c.charge_id, "order_id": c.order_id, "amount": c.amount, "instance": c.instance}


async def main() -> None:
    p = parser("a payment service instance")
    p.add_argument("--guard", choices=GUARDS, required=True)
    p.add_argument("--pg", required=True, help="the ledger's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--redis", required=True, help="where the marks live (Redis URL)")
    p.add_argument("--lease-ms", type=int, default=2000)
    p.add_argument("--mark-ttl-ms", type=int, default=4000)
    p.add_argument("--work-ms", type=int, default=20)
    p.add_argument("--narrate", choices=("on", "off"), default="on")
    args = p.parse_args()
    runtime = ServiceRuntime(args)
    service = PaymentService(runtime, args)
    routes = [
        Route("/pay", service.pay, methods=["POST"]),
        Route("/_arm", service.arm, methods=["POST"]),
    ]
    await runtime.serve(routes, on_start=service.start, on_close=service.close)


if __name__ == "__main__":
    asyncio.run(main())
