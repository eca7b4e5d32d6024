"""``txn-reliable-message``: transactional (half) messages with check-back, as RocketMQ's.

The seed's remedy of eventual consistency through a message that cannot run ahead of
the transaction it tells about. A client places orders with service A
(:mod:`scenarios.messaging.rm_producer`, orders in one PostgreSQL); for each one A sends
a HALF message to the broker (:mod:`scenarios.messaging.broker`, a process of ours
keeping its messages in Redis), runs its local transaction, then ends the message with
COMMIT (delivered to the topic's stream) or ROLLBACK. A message A leaves unended is
checked back: the broker asks A what became of it, ``check_after_ms`` after the HALF, then
every ``check_every_ms``, and discards it after ``max_checks`` checks without a COMMIT or
a ROLLBACK. Consumer B (:mod:`scenarios.messaging.rm_consumer`) applies each delivered
message in the other PostgreSQL, deduplicated by a Redis mark (``dedup=on``) or not.
Every ``refuse_every``-th order is refused by A's business rule (out of stock): its
transaction rolls back, so "applied if and only if committed" is tested both ways.

Faults, at the ``fault_at``-th order (or the next one when injected live; that order is
never one refused by design):

- ``producer-crash-after-half``: A SIGKILLs itself with the HALF stored and its local
  transaction open (the order inserted, uncommitted: PostgreSQL rolls it back). The run
  restarts A once the broker has made a check A could not answer (``no answer
  (refused)``); the next check finds the record BEGUN and unheld: ROLLBACK. B never
  sees the message;
- ``answer-unknown``: A holds its local transaction open ``hold_ms`` and sends no
  COMMIT or ROLLBACK (UNKNOWN): the checks find the transaction open (UNKNOWN) until it
  commits, then COMMIT, and the message is delivered. The pitfall beside it: with
  ``max_checks`` too few for ``hold_ms`` (``--set max_checks=2``: the last check at
  ``check_after_ms + check_every_ms`` = 2.5 s, before the commit at 4 s) the broker
  discards a message whose order A then commits: VIOLATED, lost for good — RocketMQ's
  real pitfall (a local transaction longer than ``transactionTimeout`` plus
  ``transactionCheckMax`` intervals, or a listener that answers UNKNOW for ever);
- ``lost-commit``: A commits and its COMMIT never reaches the broker: a check-back finds
  COMMIT, and delivers;
- ``consumer-fail``: B applies the message, sets its mark, and dies before ``XACK``;
  restarted, it reads its pending entry again, and the mark makes it a no-op. With
  ``dedup=off`` it is applied twice: VIOLATED.

Invariant: B applies a message if and only if A committed its order, at most once —
judged (:mod:`scenarios.messaging.reliable_checker`) from what the stores hold once every
message is settled (no HALF left, nothing undelivered or pending, no local transaction
open): A's orders and records, the broker's message hashes, B's effects and marks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from psycopg import sql
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import messaging
from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.clients import behind, text
from scenarios.kit.context import RunContext
from scenarios.kit.database import Database, connect, create_schema, two_databases
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service
from scenarios.messaging import rm_consumer, rm_producer
from scenarios.messaging.reliable_checker import BROKER, CONSUMER, INVARIANT, PRODUCER, check

CLIENT = "client"
TOPIC = "orders"
FAULTS = ("producer-crash-after-half", "answer-unknown", "lost-commit", "consumer-fail")
ARMS = {
    "producer-crash-after-half": (PRODUCER, "crash-after-half"),
    "answer-unknown": (PRODUCER, "answer-unknown"),
    "lost-commit": (PRODUCER, "lose-commit"),
    "consumer-fail": (CONSUMER, "crash-before-ack"),
}
"""A fault -> the service armed, and with what."""
ORDER_TIMEOUT_S = 12.0


def _int(name: str, default: str, what: str, lo: int, hi: int) -> Param:
    return Param(name, default, what, minimum=lo, maximum=hi)


SPEC = ScenarioSpec(
    name="txn-reliable-message",
    title="Transactional (half) messages with check-back",
    summary="Service A sends a HALF message to a broker process, runs its local PostgreSQL transaction, "
    "then COMMITs or ROLLBACKs the message; the broker checks back with A on a message left unended and "
    "discards it after too many checks; consumer B applies delivered messages in the other PostgreSQL, "
    "deduplicated by a Redis mark.",
    invariant=INVARIANT,
    params=(
        _int("orders", "8", "orders A takes (one message each)", 1, 500),
        _int("refuse_every", "5", "every n-th order is refused: out of stock, rolled back (0: none)", 0, 500),
        Param("dedup", "on", "on: B skips a message its Redis mark says applied; off: naive", ("on", "off")),
        _int(
            "check_after_ms", "1500", "first check-back after the HALF (transactionTimeout: 6 s)", 100, 60_000
        ),
        _int(
            "check_every_ms", "1000", "then a check this often (transactionCheckInterval: 60 s)", 100, 60_000
        ),
        _int("max_checks", "5", "checks made before it is discarded (transactionCheckMax: 15)", 1, 50),
        _int("check_timeout_ms", "500", "how long a check waits for A's answer", 50, 10_000),
        _int("hold_ms", "4000", "answer-unknown: how long A holds its local transaction open", 100, 60_000),
        _int("gap_ms", "50", "pause between two orders", 0, 10_000),
        _int("fault_at", "3", "which order a fault given at start hits", 1, 500),
    ),
    faults=(
        FaultSpec(
            "producer-crash-after-half",
            "A is SIGKILLed with the HALF stored, its local transaction open: the check-back finds ROLLBACK",
        ),
        FaultSpec(
            "answer-unknown",
            "A holds its local transaction open and answers UNKNOWN: checked again until it commits",
        ),
        FaultSpec("lost-commit", "A commits, its COMMIT never reaches the broker: a check-back delivers it"),
        FaultSpec(
            "consumer-fail",
            "B applies the message and dies before XACK: redelivered, the mark makes it a no-op",
        ),
    ),
    show="each half message's hash in Redis (HALF with its checks and next check counting down, then "
    "COMMITTED, ROLLED_BACK or DISCARDED), the topic's stream and B's pending entries, B's marks; lanes "
    "for the client, A, the broker and B, each message followed from its HALF to B's effect",
    sources=(
        "the seed: reliable messages (transactional messages, RocketMQ)",
        "RocketMQ: transactional messages, TransactionListener, transactionTimeout, "
        "transactionCheckInterval, transactionCheckMax",
    ),
    needs=("postgres",),
)


async def run(ctx: RunContext) -> None:
    a_db, b_db = two_databases(ctx.run_id, ctx.env.postgres)
    node = ctx.env.masters[0]
    store = ctx.client(node)
    await ctx.set_actors([CLIENT, PRODUCER, BROKER, CONSUMER, NEMESIS])
    for db, ddl in ((a_db, rm_producer.DDL), (b_db, rm_consumer.DDL)):
        ctx.cleanup_schema(db.target, db.schema)
        await create_schema(db.target, db.schema, ddl)
    ctx.cleanup_matching(node, messaging.rmq_prefix(ctx.run_id) + "*")
    await store.xgroup_create(
        messaging.topic_key(ctx.run_id, TOPIC), rm_consumer.GROUP, id="0", mkstream=True
    )
    url = ctx.env.target(node).url
    broker_args = [
        "--redis", url, "--check-after-ms", str(ctx.number("check_after_ms")),
        "--check-every-ms", str(ctx.number("check_every_ms")), "--max-checks", str(ctx.number("max_checks")),
        "--check-timeout-ms", str(ctx.number("check_timeout_ms")),
    ]  # fmt: skip
    consumer_args = [
        "--redis", url, "--dsn", b_db.target.dsn, "--schema", b_db.schema, "--topic", TOPIC,
        "--dedup", ctx.choice("dedup"),
    ]  # fmt: skip
    broker, _ = await asyncio.gather(
        ctx.services.start(BROKER, "rmq-broker", "scenarios.messaging.broker", broker_args),
        ctx.services.start(
            CONSUMER, "rmq-consumer", "scenarios.messaging.rm_consumer", consumer_args, restart=True
        ),
    )
    producer_args = [
        "--dsn",
        a_db.target.dsn,
        "--schema",
        a_db.schema,
        "--broker",
        broker.address,
        "--topic",
        TOPIC,
    ]
    await ctx.services.start(PRODUCER, "rmq-producer", "scenarios.messaging.rm_producer", producer_args)
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"A keeps its orders in {a_db.name} ({a_db.schema}), "
        f"B its effects in {b_db.name} ({b_db.schema}); "
        f"the broker keeps its messages under {messaging.rmq_prefix(ctx.run_id)} on {node}; "
        f"dedup={ctx.choice('dedup')}",
    )
    lab = _Lab(ctx, store, ctx.closing(Http()))
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    await with_helpers(ctx, plan.arm, [lab.client(plan)])
    for fault in [*plan.armed, *plan.scheduled]:
        ctx.record(RUNNER, "info", "fault-unused", value=fault, note=f"{fault} came after the last order")
    left = await lab.settle()
    if left:
        ctx.record(RUNNER, "info", "unsettled", note=f"still under way at the deadline: {'; '.join(left)}")
    await asyncio.gather(*lab.background)
    ctx.record(RUNNER, "info", "drain", note="A, the broker and B stop")
    await ctx.services.stop_all(timeout=5)
    await lab.read(a_db, b_db)
    await lab.table()


class _Lab:
    """The run's side: the client placing orders, the faults, the settling, the reading."""

    def __init__(self, ctx: RunContext, store: Redis, http: Http) -> None:
        self.ctx, self.store, self.http = ctx, store, http
        self.run_id = ctx.run_id
        self.sent: list[str] = []
        self.answers: dict[str, str] = {}
        self.final: dict[str, list[str]] = {}
        self.background: list[asyncio.Task[None]] = []
        ms = ctx.number("check_after_ms") + ctx.number("hold_ms")
        ms += ctx.number("max_checks") * (ctx.number("check_every_ms") + ctx.number("check_timeout_ms"))
        self.settle_s = ms / 1000 + 10
        """Long enough for every message to be decided by its last check, and consumed."""

    @property
    def producer(self) -> Service:
        return self.ctx.services.get(PRODUCER)

    async def client(self, plan: FaultPlan) -> None:
        every = self.ctx.number("refuse_every")
        for n in range(1, self.ctx.number("orders") + 1):
            if self.ctx.stopping.is_set():
                return
            plan.step()
            fault = plan.take()
            msg = f"o{n}"
            if fault is not None:
                await self.arm(msg, fault)
            await self.place(msg, 10 * n, refuse=fault is None and every > 0 and n % every == 0)
            if fault == "producer-crash-after-half":
                await self.restart_producer(msg)
            elif fault is not None:
                self.background.append(asyncio.create_task(self.heal_when_settled(msg, fault)))
            await self.table()
            await asyncio.sleep(self.ctx.number("gap_ms") / 1000)

    async def arm(self, msg: str, fault: str) -> None:
        name, what = ARMS[fault]
        service = self.ctx.services.get(name)
        reply = await self.http.post(
            service, "/_arm", {"id": msg, "fault": what, "hold_ms": self.ctx.number("hold_ms")}, 5
        )
        if not reply.ok:
            raise ScenarioError(f"could not arm {name}: {reply.error or reply.status}")
        hold, mark = self.ctx.number("hold_ms"), " and setting its mark" * (self.ctx.choice("dedup") == "on")
        notes = {
            "producer-crash-after-half": "A dies (SIGKILL) once its HALF is stored, its transaction open",
            "answer-unknown": f"A holds its local transaction open {hold} ms and sends no COMMIT: "
            "UNKNOWN to the checks until it commits",
            "lost-commit": "A's COMMIT to the broker is lost on the way",
            "consumer-fail": f"B dies (SIGKILL) after applying it{mark}, before XACK",
        }
        self.ctx.record(
            NEMESIS, "info", "fault", key=msg, value=fault, note=f"{msg}: {notes[fault]}", data={"msg": msg}
        )

    async def place(self, msg: str, amount: int, refuse: bool) -> None:
        self.sent.append(msg)
        span = {"msg": msg, "span": msg}
        what = f"order {msg} of {amount}" + (" (out of stock by design)" if refuse else "")
        self.ctx.record(CLIENT, "invoke", "request", key=msg, note=f"{msg}: {what} to A", data=span)
        body = {"id": msg, "amount": amount, "outcome": "refuse" if refuse else "commit"}
        reply = await self.http.post(self.producer, "/order", body, ORDER_TIMEOUT_S)
        if reply.status is not None:
            outcome = str(reply.body.get("outcome") or f"HTTP {reply.status}")
            why = str(reply.body.get("reason") or reply.body.get("error") or "")
            kind = {"committed": "ok", "unknown": "info"}.get(outcome, "fail")
            self.answers[msg] = outcome
            note = f"{msg}: A says {outcome}" + (f" ({why})" if why else "")
            self.ctx.record(CLIENT, kind, "request", key=msg, value=outcome, note=note, data=span)
        else:
            self.answers[msg] = "no answer"
            note = f"{msg}: no answer from A ({reply.error})"
            tick = span | {"tick": "timeout"}
            self.ctx.record(CLIENT, "info", "request", key=msg, value="unknown", note=note, data=tick)

    async def message(self, msg: str) -> dict[str, str]:
        raw = await self.store.hgetall(messaging.half_key(self.run_id, msg))
        return {text(k): text(v) for k, v in raw.items()}

    async def restart_producer(self, msg: str) -> None:
        """Once the broker has checked A while it lay dead (or after a while), start A again."""
        wait_s = (self.ctx.number("check_after_ms") + self.ctx.number("check_timeout_ms")) / 1000 + 3
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:  # another process's state: polled
            if not self.producer.running and int((await self.message(msg)).get("checks") or 0) >= 1:
                break
            await asyncio.sleep(0.05)
        service = await self.ctx.services.restart(PRODUCER)
        self.ctx.record(
            NEMESIS, "info", "heal", key=msg, value="producer-crash-after-half",
            note=f"{msg}: A started again (pid {service.pid}): the next check-back asks it",
            data={"msg": msg},
        )  # fmt: skip

    async def heal_when_settled(self, msg: str, fault: str) -> None:
        deadline = time.monotonic() + self.settle_s
        state = ""
        while time.monotonic() < deadline:
            state = (await self.message(msg)).get("state", "")
            if state and state != messaging.HALF and not await self.unconsumed():
                break
            await asyncio.sleep(0.05)
        self.ctx.record(
            NEMESIS, "info", "heal", key=msg, value=fault, note=f"{msg}: settled, {state or 'never stored'}",
            data={"msg": msg},
        )  # fmt: skip

    async def unconsumed(self) -> str:
        """What of the topic B has not acknowledged yet ('' when nothing)."""
        return await behind(self.store, messaging.topic_key(self.run_id, TOPIC), rm_consumer.GROUP)

    async def settle(self) -> list[str]:
        """Wait until no message is HALF, B has acknowledged every delivered one and A has no
        local transaction open; what is left at the deadline."""
        deadline = time.monotonic() + self.settle_s
        schedule = messaging.half_schedule_key(self.run_id)
        while True:
            left = []
            try:
                if n := await self.store.zcard(schedule):
                    left.append(f"{n} message(s) HALF")
                if what := await self.unconsumed():
                    left.append(what)
            except (redis_errors.RedisError, OSError) as exc:
                left.append(f"Redis: {type(exc).__name__}")
            reply = await self.http.get(self.producer, "/_busy", 2)
            if reply.ok and reply.body.get("busy"):
                left.append(f"A's local transaction(s) open: {', '.join(map(str, reply.body['busy']))}")
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.05)

    async def read(self, a_db: Database, b_db: Database) -> None:
        """What every store holds at the end, into the history the checker judges."""
        ctx = self.ctx
        async with await connect(a_db.target, autocommit=True) as conn:
            orders = await _rows(conn, "SELECT id, amount FROM {}.orders", a_db.schema)
            records = await _rows(conn, "SELECT msg_id, state FROM {}.local_txns", a_db.schema)
        states = Counter(str(s) for s in records.values())
        ctx.record(
            RUNNER, "ok", "producer-db",
            note=f"A ({a_db.name}, {a_db.schema}): {len(orders)} order(s) committed; its records: "
            + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"),
            data={"orders": orders, "records": records},
        )  # fmt: skip
        messages = {}
        for msg in self.sent:
            held = await self.message(msg)
            if held:
                messages[msg] = {k: held.get(k, "") for k in ("state", "checks", "max_checks", "last_answer")}
        held_states = Counter(m["state"] for m in messages.values())
        ctx.record(
            RUNNER, "ok", "broker-read",
            note=f"the broker: {len(messages)} message(s): "
            + ", ".join(f"{n} {s}" for s, n in sorted(held_states.items())),
            data={"messages": messages},
        )  # fmt: skip
        async with await connect(b_db.target, autocommit=True) as conn:
            effects = await _rows(
                conn, "SELECT msg_id, count(*) FROM {}.effects GROUP BY msg_id", b_db.schema
            )
        marks = [m for m in self.sent if await self.store.exists(messaging.done_key(self.run_id, m))]
        ctx.record(
            RUNNER, "ok", "consumer-db",
            note=f"B ({b_db.name}, {b_db.schema}): {sum(int(v) for v in effects.values())} effect(s) for "
            f"{len(effects)} message(s); {len(marks)} mark(s) set",
            data={"effects": effects, "marks": marks},
        )  # fmt: skip
        ctx.record(
            RUNNER, "ok", "stores-read", note="A's database, the broker's messages, B's database and marks"
        )
        for msg in self.sent:
            held = messages.get(msg, {})
            self.final[msg] = [
                "committed" if msg in orders else str(records.get(msg, "none")).lower().replace("_", " "),
                str(held.get("state", "—")),
                str(held.get("checks", "—")),
                str(held.get("last_answer") or "—"),
                str(effects.get(msg, 0)),
            ]

    async def table(self) -> None:
        rows = [["message", "client's answer", "A's order", "broker", "checks", "last answer", "B applied"]]
        for msg in self.sent:
            rows.append([msg, self.answers.get(msg, "…"), *self.final.get(msg, ["…"] * 5)])
        await self.ctx.set_table(rows)


async def _rows(conn: Any, query: str, schema: str) -> dict[str, Any]:
    cur = await conn.execute(sql.SQL(query).format(sql.Identifier(schema)))
    return {str(k): v if isinstance(v, (int, str)) else str(v) for k, v in await cur.fetchall()}


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
