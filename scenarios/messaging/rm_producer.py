"""Service A of ``txn-reliable-message``: it takes orders, and tells the rest of the
world through transactional (half) messages — RocketMQ's ``TransactionListener``, with
the database as the only truth it answers check-backs from.

``POST /order {id, amount, outcome}`` (``outcome``: ``commit``, or ``refuse`` for an
order that fails its business rule: out of stock):

1. ``local_txns`` gets ``(id, BEGUN)``, committed on its own: from now on the order
   has a record;
2. the local transaction begins and locks that record (``SELECT ... FOR UPDATE``);
3. the HALF message goes to the broker (``POST /half``): no HALF stored, no order;
4. in the same local transaction: the ``orders`` row, and the record set COMMITTED —
   or, refused, the transaction rolls back and the record is set ROLLED_BACK;
5. COMMIT or ROLLBACK goes to the broker (``POST /end``).

``GET /check?id=`` answers a check-back from what PostgreSQL holds, never from memory
(a restarted A has none): COMMITTED -> COMMIT; ROLLED_BACK, no record at all (never
happened here), or BEGUN with no transaction holding it (the one that began it died,
and PostgreSQL rolled it back with its connection) -> ROLLBACK; the record locked by a
transaction still open -> UNKNOWN. That lock (tried with ``FOR SHARE NOWAIT``) is why
the record is written and locked *before* the HALF goes out: a check can only come after
the HALF is stored, and by then an order in progress is visibly in progress. Had the
record been inserted inside the local transaction instead, a check during it would not
see it (MVCC) and would answer ROLLBACK for an order about to commit.

Faults, armed by the run for one order with ``POST /_arm {id, fault, hold_ms}``:

- ``crash-after-half``: this process SIGKILLs itself once the HALF is stored, its local
  transaction open with the order inserted and uncommitted. PostgreSQL rolls it back
  when the connection dies, so the truth is ROLLBACK (the crash point chosen before the
  local commit: the one where a broker that delivered without asking would be wrong);
- ``answer-unknown``: the local transaction is held open ``hold_ms`` (a slow step
  inside it). The order's answer does not wait: A ends its executor with UNKNOWN, as a
  RocketMQ listener may, and sends no COMMIT or ROLLBACK at all — from then on the
  check-backs alone decide, and they find UNKNOWN until the transaction commits;
- ``lose-commit``: the local transaction commits, and the COMMIT to the broker is
  dropped on the way (never sent): only a check-back can deliver the message.

Narrated on A's lane: ``committed`` / ``rolled-back`` ticks, each check-back answered,
every op with ``data.msg`` (the message id, which is the order id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.state import now_ms
from scenarios.kit.database import Pool, error_line
from scenarios.kit.http import Http
from scenarios.kit.process import ServiceRuntime, parser, run

DDL = """
CREATE TABLE orders (
    id text PRIMARY KEY, amount bigint NOT NULL,
    t_ms bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
);
CREATE TABLE local_txns (
    msg_id text PRIMARY KEY, state text NOT NULL, updated_ms bigint NOT NULL
);
"""
"""A's tables: the business row, and the record of each order's local transaction."""
FAULTS = ("crash-after-half", "answer-unknown", "lose-commit")
POOL = 8
BROKER_TIMEOUT_S = 3.0
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Refused(Exception):
    """The local transaction cannot commit: no HALF stored."""


class OutOfStock(Refused):
    """The order's business rule refuses it (by design, for orders sent with ``refuse``)."""


@dataclass(frozen=True)
class Order:
    id: str
    amount: int
    outcome: str

    def body(self) -> str:
        return json.dumps({"order": self.id, "amount": self.amount})


class Producer:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.pool = Pool(args.dsn, POOL, rt.name)
        self.schema = sql.Identifier(args.schema)
        self.broker: str = args.broker
        self.topic: str = args.topic
        self.http = Http(connections=16)
        self.armed: dict[str, dict[str, Any]] = {}
        self.open: set[str] = set()
        """Orders whose local transaction is under way (``GET /_busy``)."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self.results = {"committed": 0, "rolled back": 0}

    async def start(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
        await self.pool.close()

    def note(self, kind: str, f: str, msg: str, note: str, tick: str | None = None, **data: Any) -> None:
        detail = {"msg": msg, **({"tick": tick} if tick else {}), **data}
        self.rt.note(self.rt.name, kind, f, key=msg, note=f"{msg}: {note}", data=detail)

    def _detail(self) -> None:
        self.rt.detail = ", ".join(f"{n} {what}" for what, n in self.results.items())

    # ------------------------------------------------------------------ faults

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("fault") not in FAULTS:
            return JSONResponse(
                {"error": f"no fault {body.get('fault')!r} (known: {', '.join(FAULTS)})"}, 400
            )
        self.armed[str(body["id"])] = {"fault": body["fault"], "hold_ms": int(body.get("hold_ms", 0))}
        return JSONResponse({"armed": self.armed[str(body["id"])]})

    async def busy(self, request: Request) -> JSONResponse:
        return JSONResponse({"busy": sorted(self.open)})

    # ------------------------------------------------------------------ orders

    async def order(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            o = Order(str(body["id"]), int(body["amount"]), str(body.get("outcome", "commit")))
            if not o.id or o.amount <= 0 or o.outcome not in ("commit", "refuse"):
                raise ValueError(body)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {id, amount > 0, outcome: commit|refuse}"}, 400)
        self.rt.served(f"order {o.id}")
        armed = self.armed.pop(o.id, {})
        try:
            if not await self._begun(o):
                return JSONResponse({"error": f"order {o.id} exists already"}, 409)
        except (psycopg.Error, OSError) as exc:
            return JSONResponse({"error": error_line(exc)}, 503)
        self.open.add(o.id)
        half = asyncio.Event()
        work = asyncio.create_task(self._local(o, armed, half))
        self.tasks.add(work)
        work.add_done_callback(self.tasks.discard)
        if armed.get("fault") != "answer-unknown":
            return await work
        waiting = asyncio.create_task(half.wait())
        await asyncio.wait([work, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if work.done():
            return work.result()
        self.note(
            "info", "unknown", o.id,
            f"the local transaction is still open (held {armed['hold_ms']} ms, injected): no COMMIT or "
            "ROLLBACK sent — UNKNOWN: the check-backs decide",
            fault="answer-unknown",
        )  # fmt: skip
        return JSONResponse({"outcome": "unknown", "reason": "local transaction still open"}, 202)

    async def _begun(self, o: Order) -> bool:
        """The order's record, BEGUN, committed before anything else (False: it exists)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.local_txns (msg_id, state, updated_ms) VALUES (%s, 'BEGUN', %s) "
                    "ON CONFLICT DO NOTHING"
                ).format(self.schema),
                (o.id, now_ms()),
            )
            return cur.rowcount == 1

    async def _local(self, o: Order, armed: dict[str, Any], half: asyncio.Event) -> JSONResponse:
        """HALF, the local transaction, then the producer's word to the broker."""
        fault = str(armed.get("fault", ""))
        try:
            async with self.pool.connection() as conn:
                try:
                    async with conn.transaction():
                        await conn.execute(
                            sql.SQL("SELECT state FROM {}.local_txns WHERE msg_id = %s FOR UPDATE").format(
                                self.schema
                            ),
                            (o.id,),
                        )
                        await self._half(o)
                        half.set()
                        if fault == "crash-after-half":
                            await self._crash(o)
                        await conn.execute(
                            sql.SQL("INSERT INTO {}.orders (id, amount) VALUES (%s, %s)").format(self.schema),
                            (o.id, o.amount),
                        )
                        if o.outcome == "refuse":
                            raise OutOfStock("out of stock")
                        if fault == "answer-unknown":
                            await asyncio.sleep(int(armed["hold_ms"]) / 1000)
                        await self._set(conn, o, "COMMITTED")
                except (Refused, psycopg.Error, OSError) as exc:
                    return await self._rolled_back(conn, o, exc, fault if half.is_set() else "no-half")
                self.results["committed"] += 1
                self._detail()
                if fault == "answer-unknown":
                    self.note(
                        "ok", "local-txn", o.id,
                        "committed locally, after holding its transaction open: the broker learns it "
                        "only from a check-back",
                        tick="committed", amount=o.amount,
                    )  # fmt: skip
                    return JSONResponse({"outcome": "committed"})
                self.note(
                    "ok",
                    "local-txn",
                    o.id,
                    f"order of {o.amount} committed locally",
                    "committed",
                    amount=o.amount,
                )
                await self._end(o, "COMMIT", fault)
                return JSONResponse({"outcome": "committed"})
        finally:
            self.open.discard(o.id)

    async def _half(self, o: Order) -> None:
        body = {"id": o.id, "topic": self.topic, "body": o.body(), "producer": self.rt.name}
        reply = await self.http.post(self.broker, "/half", body, BROKER_TIMEOUT_S)
        if not reply.ok:
            raise Refused(f"no HALF stored (broker: {reply.error or reply.status})")

    async def _set(self, conn: Conn, o: Order, state: str) -> None:
        await conn.execute(
            sql.SQL("UPDATE {}.local_txns SET state = %s, updated_ms = %s WHERE msg_id = %s").format(
                self.schema
            ),
            (state, now_ms(), o.id),
        )

    async def _rolled_back(self, conn: Conn, o: Order, exc: BaseException, fault: str) -> JSONResponse:
        """``conn``: the local transaction's own (rolled back by now): a second one from the
        pool while this one is held could wait for ever once every connection is so held."""
        why = str(exc) if isinstance(exc, Refused) else error_line(exc)
        # if it fails, the record stays BEGUN, unlocked: a check-back answers ROLLBACK all the same
        with contextlib.suppress(psycopg.Error, OSError):
            await self._set(conn, o, "ROLLED_BACK")
        self.results["rolled back"] += 1
        self._detail()
        self.note("fail", "local-txn", o.id, f"rolled back: {why}", "rolled-back", reason=why)
        if fault not in ("answer-unknown", "no-half"):  # no HALF stored: nothing to end
            await self._end(o, "ROLLBACK", fault)
        status = 200 if isinstance(exc, OutOfStock) else 503
        return JSONResponse({"outcome": "rolled back", "reason": why}, status)

    async def _end(self, o: Order, action: str, fault: str) -> None:
        if fault == "lose-commit":
            self.note(
                "info", "end-lost", o.id,
                f"{action} lost on its way to the broker (injected): never arrives",
                fault="lost-commit", action=action,
            )  # fmt: skip
            return
        reply = await self.http.post(self.broker, "/end", {"id": o.id, "action": action}, BROKER_TIMEOUT_S)
        if not reply.ok:
            why = reply.error or f"HTTP {reply.status}"
            self.note(
                "info", "end", o.id, f"{action} not taken by the broker ({why}): a check-back will tell it"
            )

    async def _crash(self, o: Order) -> None:
        await self.rt.crash(
            o.id,
            f"{o.id}: SIGKILL (injected) with the HALF stored and the local transaction open, "
            "the order inserted but not committed",
            msg=o.id, fault="producer-crash-after-half",
        )  # fmt: skip

    # ------------------------------------------------------------------ check-backs

    async def check(self, request: Request) -> JSONResponse:
        msg = request.query_params.get("id", "")
        if not msg:
            return JSONResponse({"error": "GET /check?id=<message id>"}, 400)
        self.rt.served(f"check {msg}")
        try:
            found = await self.pool.rows(
                sql.SQL("SELECT state FROM {}.local_txns WHERE msg_id = %s FOR SHARE NOWAIT").format(
                    self.schema
                ),
                (msg,),
            )
        except pg_errors.LockNotAvailable:
            answer, why = "UNKNOWN", "its local transaction is still open, holding the record"
        except (psycopg.Error, OSError) as exc:
            return JSONResponse({"error": error_line(exc)}, 503)
        else:
            state = str(found[0][0]) if found else ""
            answer, why = {
                "COMMITTED": ("COMMIT", "committed"),
                "ROLLED_BACK": ("ROLLBACK", "rolled back"),
                "BEGUN": ("ROLLBACK", "begun, and no transaction holds it: it died and was rolled back"),
                "": ("ROLLBACK", "never happened here"),
            }.get(state, ("UNKNOWN", f"record in state {state!r}"))
        self.note("ok", "check", msg, f"check-back answered {answer}: {why}", answer=answer)
        return JSONResponse({"answer": answer, "why": why})


def main() -> None:
    p = parser("service A: orders in PostgreSQL, told the world by transactional (half) messages")
    p.add_argument("--dsn", required=True, help="A's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--broker", required=True, help="the broker's address (host:port)")
    p.add_argument("--topic", default="orders")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    producer = Producer(rt, args)
    routes = [
        Route("/order", producer.order, methods=["POST"]),
        Route("/check", producer.check),
        Route("/_arm", producer.arm, methods=["POST"]),
        Route("/_busy", producer.busy),
    ]
    run(rt.serve(routes, on_start=producer.start, on_close=producer.close))


if __name__ == "__main__":
    main()
