"""``txn-best-effort``: best-effort notification — a payment service tells a merchant,
again and again on a backoff ladder, and the merchant reconciles by asking.

The seed's last remedy, as WeChat Pay and Alipay run it: service A
(:mod:`scenarios.messaging.be_producer`) places each payment in its PostgreSQL and
queues a notification; the notifier (:mod:`scenarios.messaging.notifier`) POSTs it to
service B (:mod:`scenarios.messaging.receiver`) until B answers the literal
``success``, waiting longer after each failure, and gives up after the ladder's last
rung; B applies each payment once (its ``applied`` row and its effect in one local
transaction of its own PostgreSQL) and, with ``reconcile=on``, asks A for the payments
it should have been told of by now and applies what it lacks.

The ladder is WeChat Pay's — 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h,
24 h 4 min in all — compressed: ``ladder_ms`` is what its first rung (15 s) becomes and
every rung is scaled alike (300: ÷50, so 15s→300 ms, 30s→600 ms, 3m→3.6 s, 10m→12 s),
and ``rungs`` says how many of its rungs are kept. The first attempt goes at once: the
default ``0,300,300,600,3600`` ms is 5 attempts over 4.8 s.

Faults, at the ``fault_at``-th payment (or the next one when injected live), each for
``fault_ms``:

- ``receiver-down``: B is SIGKILLed and started again after ``fault_ms``: attempts are
  refused and the ladder goes on. Down for less than the ladder (1500 ms by default),
  the notification is ACKED after the restart; for longer (``--set fault_ms=6000``)
  the notifier gives up (GAVE_UP) and B's reconciliation applies the payment and marks
  the notification RECONCILED — or, with ``reconcile=off``, B never has it: violated;
- ``receiver-slow``: B applies, and answers after the notifier's timeout: the notifier
  tries again, and B's applied row turns the repeat away;
- ``lost-ack``: B applies, and its answer is lost (503): again, the repeat is skipped.

Invariant: B ends consistent with A (every payment A holds applied in B exactly once,
nothing A does not hold), by notification or reconciliation, never twice — judged from
what A's and B's databases and the notifications' hashes hold at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import messaging
from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioSpec
from scenarios.kit.clients import text
from scenarios.kit.context import RunContext
from scenarios.kit.database import Database, connect, create_schema, two_databases
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service
from scenarios.messaging.be_producer import ORDERS_DDL, read_orders
from scenarios.messaging.best_effort_checker import INVARIANT, NOTIFIER, PRODUCER, RECEIVER, check
from scenarios.messaging.receiver import RECEIVER_DDL, read_receiver

WECHAT_S = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
"""WeChat Pay's retry ladder (s): 24 h 4 min in all."""
FAULTS = ("receiver-down", "receiver-slow", "lost-ack")
ARMS = {"receiver-slow": "slow", "lost-ack": "lose-ack"}
SLOW_BEYOND_MS = 400
"""How far past the notifier's timeout a slow B answers."""

SPEC = ScenarioSpec(
    name="txn-best-effort",
    title="Best-effort notification: a backoff ladder, then reconciliation",
    summary="Service A places payments in PostgreSQL and queues a notification for each; a notifier "
    "process POSTs it to service B until B answers 'success', on WeChat Pay's ladder compressed, then gives "
    "up; B applies each payment once (a primary key in its own PostgreSQL) and reconciles by querying A.",
    invariant=INVARIANT,
    params=(
        Param("payments", "6", "payments A places", minimum=1, maximum=1000),
        Param("every_ms", "200", "time between two payments", minimum=0, maximum=60_000),
        Param(
            "rungs",
            "4",
            "how many of WeChat Pay's 15 rungs (15s, 15s, 30s, 3m, 10m, 20m, 30m, …) the "
            "ladder keeps: 4 → 5 attempts (the first at once)",
            minimum=1,
            maximum=15,
        ),
        Param(
            "ladder_ms",
            "300",
            "what WeChat's first rung (15 s) becomes; every rung scaled alike: 300 is "
            "÷50 (15s→300 ms, 30s→600 ms, 3m→3.6 s, 10m→12 s)",
            minimum=10,
            maximum=15_000,
        ),
        Param(
            "notify_timeout_ms",
            "500",
            "how long the notifier waits for B's answer",
            minimum=50,
            maximum=60_000,
        ),
        Param(
            "reconcile",
            "on",
            "on: B asks A (GET /orders?since=) for what it should have been told of "
            "and applies what it lacks; off: B only hears what the notifier tells it",
            choices=("on", "off"),
        ),
        Param("reconcile_every_ms", "1000", "how often B reconciles", minimum=100, maximum=600_000),
        Param(
            "dedup",
            "on",
            "on: B's applied table (primary key) turns a repeat away; off: every delivery applies (naive)",
            choices=("on", "off"),
        ),
        Param("fault_at", "3", "which payment a fault given at start hits", minimum=1, maximum=1000),
        Param(
            "fault_ms",
            "1500",
            "how long a fault lasts; longer than the ladder (4.8 s by default: "
            "--set fault_ms=6000) makes receiver-down's notifications GAVE_UP",
            minimum=100,
            maximum=3_600_000,
        ),
    ),
    faults=(
        FaultSpec("receiver-down", "B is SIGKILLed for fault_ms, then started again: attempts are refused"),
        FaultSpec("receiver-slow", "for fault_ms, B applies and answers past the notifier's timeout"),
        FaultSpec("lost-ack", "for fault_ms, B applies and its answer is lost (503)"),
    ),
    show="each notification's hash (NOTIFYING with its attempt and the next one counting down, ACKED, "
    "GAVE_UP, RECONCILED) and the notifier's schedule (a ZSET by next attempt); lanes for A (committed, "
    "queued), the notifier (each attempt, acked, gave up), B (applied, repeat skipped, reconciled) and "
    "the nemesis",
    sources=(
        "the seed: best-effort notification — retries, then the receiver queries",
        "WeChat Pay: payment result notification, retried at 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/"
        "3h/3h/3h/6h/6h",
        "Alipay: asynchronous notification, resent until the literal 'success'",
    ),
    needs=("postgres",),
)


def ladder_of(params: Mapping[str, str | int]) -> list[int]:
    """The ms before each attempt: 0 (at once), then the kept rungs, scaled."""
    unit = int(params["ladder_ms"])
    return [0] + [s * unit // 15 for s in WECHAT_S[: int(params["rungs"])]]


async def run(ctx: RunContext) -> None:
    a_db, b_db = two_databases(ctx.run_id, ctx.env.postgres)
    node = ctx.env.masters[0]
    redis_url = ctx.env.target(node).url
    ladder, timeout_ms = ladder_of(ctx.params), ctx.number("notify_timeout_ms")
    after_ms = sum(ladder) + len(ladder) * timeout_ms + 1000
    await ctx.set_actors([PRODUCER, NOTIFIER, RECEIVER, NEMESIS])
    ctx.cleanup_matching(node, messaging.notify_prefix(ctx.run_id) + "*")
    for db, ddl in ((a_db, ORDERS_DDL), (b_db, RECEIVER_DDL)):
        ctx.cleanup_schema(db.target, db.schema)
        await create_schema(db.target, db.schema, ddl)
    a_args = ["--dsn", a_db.target.dsn, "--schema", a_db.schema, "--redis", redis_url]
    a = await ctx.services.start(PRODUCER, "producer", "scenarios.messaging.be_producer", a_args)
    b_args = [
        "--dsn", b_db.target.dsn, "--schema", b_db.schema, "--redis", redis_url, "--producer", a.address,
        "--dedup", ctx.choice("dedup"), "--reconcile", ctx.choice("reconcile"),
        "--reconcile-every-ms", str(ctx.number("reconcile_every_ms")), "--reconcile-after-ms", str(after_ms),
    ]  # fmt: skip
    n_args = ["--redis", redis_url, "--ladder", ",".join(map(str, ladder)), "--timeout-ms", str(timeout_ms)]
    b, _ = await asyncio.gather(
        ctx.services.start(RECEIVER, "receiver", "scenarios.messaging.receiver", b_args),
        ctx.services.start(NOTIFIER, "notifier", "scenarios.messaging.notifier", n_args),
    )
    ctx.record(
        RUNNER, "info", "start",
        note=f"A on {a_db.name} ({a_db.schema}), B on {b_db.name} ({b_db.schema}); notifications in "
        f"{messaging.notify_prefix(ctx.run_id)}* on {node}; ladder {','.join(map(str, ladder))} ms "
        f"({len(ladder)} attempts), timeout {timeout_ms} ms; reconcile={ctx.choice('reconcile')} "
        f"(payments older than {after_ms} ms), dedup={ctx.choice('dedup')}",
        data={"ladder": ladder, "reconcile_after_ms": after_ms},
    )  # fmt: skip
    lab = _Lab(ctx, a, b, ctx.client(node), ctx.closing(Http()))
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    await with_helpers(ctx, plan.arm, [lab.payer(plan)])
    for fault in [*plan.armed, *plan.scheduled]:
        ctx.record(RUNNER, "info", "fault-unused", value=fault, note=f"{fault} came after the last payment")
    await asyncio.gather(*lab.background)
    bound_s = (after_ms + ctx.number("reconcile_every_ms")) / 1000 + 15
    left = await lab.settled(bound_s)
    if left:
        ctx.record(
            RUNNER, "info", "unsettled", note=f"not settled after {bound_s:.0f}s: {', '.join(left[:10])}"
        )
    ctx.record(RUNNER, "info", "drain", note="A, the notifier and B stop")
    await ctx.services.stop_all(timeout=5)
    await _read_stores(ctx, lab, a_db, b_db)


class _Lab:
    """The run's side: the payer, the faults it strikes at B, and the wait for the end."""

    def __init__(self, ctx: RunContext, a: Service, b: Service, redis: Redis, http: Http) -> None:
        self.ctx, self.a, self.b, self.redis, self.http = ctx, a, b, redis, http
        self.placed: dict[str, int] = {}
        self.background: list[asyncio.Task[None]] = []
        self.fault_ms = ctx.number("fault_ms")
        self.rows: dict[str, str] = {}
        """B's side of each payment, for the table (read at the end)."""

    async def payer(self, plan: FaultPlan) -> None:
        for n in range(1, self.ctx.number("payments") + 1):
            if self.ctx.stopping.is_set():
                return
            if n > 1:
                await asyncio.sleep(self.ctx.number("every_ms") / 1000)  # the payments' pace
            plan.step()
            fault = plan.take()
            if fault is not None:
                await self.strike(fault)
            await self.place(f"p{n}", 100 + n)
            await self.table()

    async def place(self, order: str, amount: int) -> None:
        body = {"id": order, "amount": amount, "notify_url": f"http://{self.b.address}/notify"}
        reply = await self.http.post(self.a, "/orders", body, 5)
        if reply.status == 201:
            self.placed[order] = amount
            return
        why = reply.error or f"{reply.status}: {reply.body.get('error', '')}"
        self.ctx.record(
            RUNNER, "fail", "pay", key=order, note=f"A did not take {order}: {why}",
            data={"msg": order, "tick": "error"},
        )  # fmt: skip
        if reply.unknown:  # it may have been placed: the stores will say
            self.placed[order] = amount

    async def strike(self, fault: str) -> None:
        ms = self.fault_ms
        if fault == "receiver-down":
            if not self.b.running:
                self.ctx.record(NEMESIS, "info", "heal", value=fault, note="not done: B is down already")
                return
            note = f"SIGKILL B for {ms} ms: notifications to it are refused, the ladder goes on"
            self.ctx.record(NEMESIS, "info", "fault", value=fault, note=note)
            await self.ctx.services.kill(RECEIVER, fault)
            self.background.append(asyncio.create_task(self.heal(fault, restart=True)))
            return
        delay = self.ctx.number("notify_timeout_ms") + SLOW_BEYOND_MS
        reply = await self.http.post(
            self.b, "/_arm", {"fault": ARMS[fault], "for_ms": ms, "delay_ms": delay}, 5
        )
        if not reply.ok:
            why = reply.error or str(reply.status)
            self.ctx.record(
                NEMESIS, "info", "heal", value=fault, note=f"not done: B could not be armed ({why})"
            )
            return
        notes = {
            "receiver-slow": f"for {ms} ms B answers {delay} ms after its work, past the notifier's "
            f"{self.ctx.number('notify_timeout_ms')} ms timeout",
            "lost-ack": f"for {ms} ms B's answers are lost (503) after it applied",
        }
        self.ctx.record(NEMESIS, "info", "fault", value=fault, note=notes[fault])
        self.background.append(asyncio.create_task(self.heal(fault, restart=False)))

    async def heal(self, fault: str, restart: bool) -> None:
        await asyncio.sleep(self.fault_ms / 1000)  # the fault's window
        if restart:
            await self.ctx.services.restart(RECEIVER)
            note = f"B started again (pid {self.b.pid}): the next attempts reach it"
        else:
            note = "B answers in time again"
        self.ctx.record(NEMESIS, "info", "heal", value=fault, note=note)

    async def notifications(self) -> dict[str, dict[str, str]]:
        ids = list(self.placed)
        pipe = self.redis.pipeline(transaction=False)
        for order in ids:
            pipe.hgetall(messaging.notification_key(self.ctx.run_id, order))
        replies: list[Any] = await pipe.execute() if ids else []
        return {order: _fields(h) for order, h in zip(ids, replies, strict=True) if h}

    def final(self, note: Mapping[str, str] | None) -> bool:
        state = (note or {}).get("state")
        return state in (messaging.ACKED, messaging.RECONCILED) or (
            state == messaging.GAVE_UP and self.ctx.choice("reconcile") == "off"
        )

    async def settled(self, bound_s: float) -> list[str]:
        """Wait until every payment's notification is done with (ACKED, RECONCILED, or GAVE_UP
        with nobody to reconcile); the ones that are not, after ``bound_s``."""
        deadline = time.monotonic() + bound_s
        shown = 0.0
        while True:  # the notifier's and B's state, in the store: polled
            notes = await self.notifications()
            left = [
                f"{o} {notes.get(o, {}).get('state', 'not taken')}"
                for o in self.placed
                if not self.final(notes.get(o))
            ]
            if time.monotonic() - shown > 0.5:
                await self.table(notes)
                shown = time.monotonic()
            if not left or time.monotonic() > deadline or self.ctx.stopping.is_set():
                return left
            await asyncio.sleep(0.05)

    async def table(self, notes: Mapping[str, Mapping[str, str]] | None = None) -> None:
        notes = notes if notes is not None else {}
        rows = [["payment", "amount", "notification", "attempts", "last", "in B"]]
        for order, amount in self.placed.items():
            n = notes.get(order, {})
            tries = f"{n.get('attempt', '?')}/{n.get('attempts', '?')}" if n else ""
            rows.append(
                [order, str(amount), n.get("state", "…"), tries, n.get("last", ""), self.rows.get(order, "…")]
            )
        await self.ctx.set_table(rows)


def _fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


async def _read_stores(ctx: RunContext, lab: _Lab, a: Database, b: Database) -> None:
    """What A's and B's databases and the notifications' hashes hold at the end, into the
    history the checker judges."""
    async with await connect(a.target, autocommit=True) as conn:
        orders = await read_orders(conn, a.schema)
    ctx.record(
        RUNNER, "ok", "orders", key=PRODUCER, value=str(len(orders)),
        note=f"A holds {len(orders)} payment(s) ({sum(x for _, x, _ in orders)} in all)",
        data={"orders": [list(o) for o in orders]},
    )  # fmt: skip
    async with await connect(b.target, autocommit=True) as conn:
        applied, effects = await read_receiver(conn, b.schema)
    ctx.record(
        RUNNER, "ok", "receiver", key=RECEIVER, value=str(len(effects)),
        note=f"B holds {len(applied)} applied row(s) and {len(effects)} effect(s)",
        data={"applied": applied, "effects": effects},
    )  # fmt: skip
    pattern = messaging.notification_key(ctx.run_id, "*")
    keys = [k async for k in lab.redis.scan_iter(match=pattern, count=500)]
    pipe = lab.redis.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    hashes: list[Any] = await pipe.execute() if keys else []
    prefix = messaging.notification_key(ctx.run_id, "")
    notes = {text(k).removeprefix(prefix): _fields(h) for k, h in zip(keys, hashes, strict=True)}
    ctx.record(
        RUNNER, "ok", "notifications", value=str(len(notes)),
        note=f"{len(notes)} notification(s): " + ", ".join(
            f"{s} {sum(1 for n in notes.values() if n.get('state') == s)}"
            for s in messaging.NOTIFICATION_STATES if any(n.get("state") == s for n in notes.values())
        ),
        data={"notifications": notes},
    )  # fmt: skip
    ctx.record(
        RUNNER, "ok", "db-read", note="A's orders, B's applied rows and effects, the notifications read"
    )
    for i, _, via, _ in effects:
        how = "reconciliation" if via == "reconcile" else f"attempt {str(via).removeprefix('notify#')}"
        lab.rows[i] = f"{lab.rows[i]} + {how}" if i in lab.rows else f"by {how}"
    lab.placed.update({o: x for o, x, _ in orders})
    await lab.table(notes)


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
