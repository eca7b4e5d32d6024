"""``idempotency``: a payment sent twice, across three service instances.

The seed's first section: the browser sends an order's payment, the reply is
lost, the browser sends it again. Clients (browsers) pay their orders through
three payment-service instances — real processes
(:mod:`scenarios.idempotency.payment_service`) — chosen round-robin per
request by the client, as a Dubbo consumer balances, so a retry lands on
another instance. A client retries when no reply comes within
``timeout_ms`` (on the next instance) or when the answer is 409 (after
``backoff_ms``), for up to ``retry_for_ms``. Every charge is a row in a
PostgreSQL ledger; that ledger, as PostgreSQL holds it at the end, is what
the checker judges.

Variants (``guard``): ``none``, ``local-set`` (each instance remembers what it
charged: no help across instances), ``db-unique`` (a unique key on the order
id in the ledger), ``redis-mark`` (the Lua claim of
:mod:`scenarios.idempotency.marks`).

Faults (at the ``fault_at``-th payment, or the next one when injected live):

- ``lost-reply``: the instance charges, then holds its reply past the
  client's timeout; the client retries on the next instance;
- ``concurrent-duplicate``: the client sends the same payment to two
  instances at the same instant;
- ``crash-mid-request``: the serving instance SIGKILLs itself at
  ``crash_at`` (``after-claim``: nothing charged yet; ``after-charge``:
  charged, the mark still IN_PROGRESS) and is restarted; the client retries;
- ``lease-too-short``: the serving instance's work takes twice the lease;
  the claim lapses while it still runs and a retry takes it over;
- ``mark-expired``: after the payment succeeded the client sends it again
  once the mark's TTL has run out.

Invariant: at most one charge per order id; every client got a consistent
answer (every successful reply for an order names the same charge, and that
charge is in the ledger).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from collectors.runs import NEMESIS, RUNNER, Op, Verdict
from scenarios.idempotency import ledger
from scenarios.idempotency.marks import mark_key
from scenarios.idempotency.payment_service import GUARDS
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.database import connect, create_schema, schema_for
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http, Reply
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service

INVARIANT = "at most one charge per order id, and every client got a consistent answer"
FAULTS = ("lost-reply", "concurrent-duplicate", "crash-mid-request", "lease-too-short", "mark-expired")
LEDGER_OP = "ledger"
ARMED = ("lost-reply", "concurrent-duplicate", "crash-mid-request", "lease-too-short")
"""The faults set up on the instance about to serve a payment."""

SPEC = ScenarioSpec(
    name="idempotency",
    title="A payment sent twice",
    summary="Clients pay orders through three payment-service processes, retrying on another instance "
    "when a reply is lost; a guard (none, a per-instance set, a unique key in PostgreSQL, a Redis mark) "
    "should keep every order to one charge.",
    invariant=INVARIANT,
    params=(
        Param(
            "guard",
            "redis-mark",
            "what stops a second charge: a per-instance set, the ledger's unique key, a Redis mark",
            choices=GUARDS,
        ),
        Param("orders", "6", "orders to pay", minimum=1, maximum=200),
        Param("clients", "2", "browsers paying them (orders are dealt round-robin)", minimum=1, maximum=16),
        Param("instances", "3", "payment-service processes", minimum=2, maximum=6),
        Param("amount", "100", "each payment's amount", minimum=1, maximum=1_000_000),
        Param(
            "timeout_ms",
            "800",
            "how long a client waits for a reply before it retries",
            minimum=50,
            maximum=30_000,
        ),
        Param(
            "backoff_ms",
            "250",
            "how long a client waits after a 409 before it asks again",
            minimum=10,
            maximum=5000,
        ),
        Param(
            "retry_for_ms",
            "8000",
            "how long a client keeps retrying one payment",
            minimum=100,
            maximum=60_000,
        ),
        Param("work_ms", "20", "the payment provider's work per charge", minimum=0, maximum=10_000),
        Param(
            "lease_ms",
            "2000",
            "how long a redis-mark claim holds before another may take over",
            minimum=50,
            maximum=60_000,
        ),
        Param(
            "mark_ttl_ms",
            "4000",
            "how long a mark lives (then the same id counts as new)",
            minimum=100,
            maximum=600_000,
        ),
        Param(
            "crash_at",
            "after-claim",
            "where crash-mid-request strikes: after-claim (nothing charged) or after-charge",
            choices=("after-claim", "after-charge"),
        ),
        Param("fault_at", "2", "which payment a fault given at start hits", minimum=1, maximum=200),
    ),
    faults=(
        FaultSpec("lost-reply", "the instance charges, then its reply is lost: the client retries elsewhere"),
        FaultSpec("concurrent-duplicate", "the same payment reaches two instances at the same instant"),
        FaultSpec("crash-mid-request", "the instance is SIGKILLed mid-request (at crash_at), then restarted"),
        FaultSpec("lease-too-short", "the work outlasts the claim's lease: a retry takes it over meanwhile"),
        FaultSpec("mark-expired", "the payment is sent again after the mark's TTL ran out"),
    ),
    show="the marks (state, owner, lease, TTL, response), the services, a lane per client and instance, "
    "the charges per order",
    sources=(
        "the seed: a unique key in the database, or a Redis key per order",
        "IETF draft-ietf-httpapi-idempotency-key-header (409 in flight, 422 another payload)",
        "Stripe: idempotent requests; brandur: idempotency keys with recovery points",
    ),
    needs=("postgres",),
)


async def run(ctx: RunContext) -> None:
    db = ctx.env.database(SPEC.name)
    schema = schema_for(ctx.run_id)
    guard = ctx.choice("guard")
    mark_node = ctx.env.masters[0]
    instances = [f"pay-{i + 1}" for i in range(ctx.number("instances"))]
    clients = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    orders = [f"order-{i + 1}" for i in range(ctx.number("orders"))]
    await ctx.set_actors([*clients, *instances, NEMESIS])
    ctx.cleanup_schema(db, schema)
    await create_schema(db, schema, ledger.ddl(unique=guard == "db-unique"))
    ctx.cleanup(mark_node, *(mark_key(ctx.run_id, o) for o in orders))
    args = [
        "--guard", guard, "--pg", db.dsn, "--schema", schema, "--redis", ctx.env.target(mark_node).url,
        "--lease-ms", str(ctx.number("lease_ms")), "--mark-ttl-ms", str(ctx.number("mark_ttl_ms")),
        "--work-ms", str(ctx.number("work_ms")),
    ]  # fmt: skip
    module = "scenarios.idempotency.payment_service"
    services = await asyncio.gather(
        *(ctx.services.start(name, "payment-service", module, args, restart=True) for name in instances)
    )
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"guard={guard}: ledger {schema}.ledger on {db.address}, marks on {mark_node}, "
        f"{len(services)} instances on {', '.join(s.address for s in services)}",
    )
    http = ctx.closing(Http())
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    conn = await connect(db, autocommit=True)
    try:
        table = _Table(ctx, conn, schema, orders)
        work = [
            _client(ctx, http, c, orders[i :: len(clients)], _round_robin(services, i), plan, table)
            for i, c in enumerate(clients)
        ]
        await with_helpers(ctx, plan.arm, work)
        # requests still running (a slow one whose client gave up) finish first: their
        # charges are real, and the ledger must be read after them
        drain_s = (
            2 * ctx.number("lease_ms") + 2 * ctx.number("timeout_ms") + ctx.number("work_ms")
        ) / 1000 + 2
        ctx.record(RUNNER, "info", "drain", note="the instances finish what they are still doing, then stop")
        await ctx.services.stop_all(timeout=drain_s)
        await _read_ledger(ctx, conn, schema)
        await table.update()
    finally:
        await conn.close()


class _Table:
    """Charges per order, as the ledger holds them: the run's own table, kept current."""

    def __init__(self, ctx: RunContext, conn: Any, schema: str, orders: list[str]) -> None:
        self.ctx, self.conn, self.schema, self.orders = ctx, conn, schema, orders
        self.answers: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def update(self) -> None:
        async with self._lock:
            charges = await ledger.charges_of(self.conn, self.schema)
        by_order: dict[str, list[ledger.Charge]] = defaultdict(list)
        for c in charges:
            by_order[c.order_id].append(c)
        rows = [["order", "charges", "charged by", "client's answer"]]
        for order in self.orders:
            mine = by_order.get(order, [])
            who = ", ".join(f"#{c.charge_id} {c.instance}" for c in mine) or "–"
            count = str(len(mine)) + (" ✘" if len(mine) > 1 else "")
            rows.append([order, count, who, self.answers.get(order, "…")])
        await self.ctx.set_table(rows)


def _round_robin(services: list[Service], start: int) -> Iterator[Service]:
    """The instances in turn, per request, as a Dubbo consumer balances (clients start apart)."""
    return itertools.islice(itertools.cycle(services), start % len(services), None)


async def _client(
    ctx: RunContext,
    http: Http,
    actor: str,
    orders: list[str],
    turn: Iterator[Service],
    plan: FaultPlan,
    table: _Table,
) -> None:
    for order in orders:
        if ctx.stopping.is_set():
            return
        plan.step()
        fault = plan.take()
        answer = await _pay(ctx, http, actor, order, turn, fault)
        if fault == "mark-expired" and answer is not None:
            wait_ms = ctx.number("mark_ttl_ms") + 500
            ctx.record(
                actor, "info", "idle", key=order, note=f"comes back {wait_ms} ms later (the mark is gone)"
            )
            await asyncio.sleep(wait_ms / 1000)
            ctx.record(NEMESIS, "info", "fault", value="mark-expired", note=f"{actor} sends {order} again")
            answer = await _pay(ctx, http, actor, order, turn, None) or answer
            ctx.record(NEMESIS, "info", "heal", value="mark-expired")
        table.answers[order] = answer or "no answer"
        await table.update()


async def _pay(
    ctx: RunContext, http: Http, actor: str, order: str, turn: Iterator[Service], fault: str | None
) -> str | None:
    """One payment, retried until a definite answer (or the retry budget is spent); a fault
    armed for it is a window on the nemesis's lane until then."""
    try:
        return await _attempts(ctx, http, actor, order, turn, fault)
    finally:
        if fault in ARMED:
            ctx.record(NEMESIS, "info", "heal", value=fault, note=f"{order} answered")


async def _attempts(
    ctx: RunContext, http: Http, actor: str, order: str, turn: Iterator[Service], fault: str | None
) -> str | None:
    timeout_s = ctx.number("timeout_ms") / 1000
    deadline = time.monotonic() + ctx.number("retry_for_ms") / 1000
    for attempt in itertools.count(1):
        service = next(turn)
        request = f"{actor}:{order}:{attempt}"
        body: dict[str, Any] = {
            "order_id": order,
            "amount": ctx.number("amount"),
            "client": actor,
            "request_id": request,
        }
        if fault is not None:
            await _arm(ctx, http, service, fault, order, request)
        if fault == "concurrent-duplicate":
            twin = next(turn)
            replies = await asyncio.gather(
                _send(ctx, http, actor, order, service, body, timeout_s, attempt),
                _send(
                    ctx,
                    http,
                    actor,
                    order,
                    twin,
                    {**body, "request_id": request + "'"},
                    timeout_s,
                    attempt,
                ),
            )
            reply = next((r for r in replies if r.ok), replies[0])
        else:
            reply = await _send(ctx, http, actor, order, service, body, timeout_s, attempt)
        fault = None
        if reply.ok:
            return f"#{reply.body.get('charge_id')}" + (" (replayed)" if reply.body.get("replayed") else "")
        if reply.status == 422:
            return "422"
        if time.monotonic() >= deadline or ctx.stopping.is_set():
            ctx.record(actor, "fail", "pay", key=order, note=f"gave up after {attempt} attempt(s)")
            return None
        if reply.status is not None:  # 409 in flight, 503: ask again later
            await asyncio.sleep(ctx.number("backoff_ms") / 1000)
    return None


async def _send(
    ctx: RunContext,
    http: Http,
    actor: str,
    order: str,
    service: Service,
    body: dict[str, Any],
    timeout_s: float,
    attempt: int,
) -> Reply:
    ctx.record(
        actor,
        "invoke",
        "pay",
        key=order,
        note=f"to {service.name}" + (f" (retry {attempt - 1})" if attempt > 1 else ""),
        data={"instance": service.name, "request": body["request_id"], "span": body["request_id"]},
    )
    reply = await http.post(service, "/pay", body, timeout_s)
    data: dict[str, Any] = {
        "instance": service.name,
        "request": body["request_id"],
        "span": body["request_id"],
    }
    if reply.ok:
        replayed = bool(reply.body.get("replayed"))
        data |= {"code": reply.status, "charge_id": reply.body.get("charge_id"), "replayed": replayed}
        if replayed:
            data["tick"] = "replayed"
        note = f"{reply.status} #{reply.body.get('charge_id')}" + (" (replayed)" if replayed else "")
        ctx.record(
            actor, "ok", "pay", key=order, value=str(reply.body.get("charge_id")), note=note, data=data
        )
    elif reply.status is not None:
        tick = {409: "conflict", 422: "mismatch"}.get(reply.status, "error")
        note = f"{reply.status} {reply.body.get('error', '')}".strip()
        ctx.record(
            actor, "fail", "pay", key=order, note=note, data=data | {"code": reply.status, "tick": tick}
        )
    else:
        # no answer: it may or may not have been served (a refused connection was not)
        kind = "fail" if reply.error == "refused" else "info"
        ctx.record(
            actor, kind, "pay", key=order, note=f"no reply ({reply.error})", data=data | {"tick": "timeout"}
        )
    return reply


async def _arm(ctx: RunContext, http: Http, service: Service, fault: str, order: str, request: str) -> None:
    """Set the fault up at its protocol point, on the instance about to serve ``order``, for
    that one request (a request of another client served meanwhile is left alone)."""
    arm: dict[str, Any] = {}
    if fault == "lost-reply":
        arm["lose_reply_ms"] = 2 * ctx.number("timeout_ms") + 200
        what = f"{service.name} will lose its reply to {order}"
    elif fault == "crash-mid-request":
        arm["crash_at"] = ctx.choice("crash_at")
        what = f"{service.name} dies {ctx.choice('crash_at')} of {order} (SIGKILL), then restarts"
    elif fault == "lease-too-short":
        arm["slow_ms"] = 2 * ctx.number("lease_ms")
        what = f"{service.name}'s work on {order} takes {2 * ctx.number('lease_ms')} ms, twice the lease"
    elif fault == "concurrent-duplicate":
        what = f"{order} goes to two instances at the same instant"
    else:
        return
    ctx.record(NEMESIS, "info", "fault", value=fault, note=what)
    if arm:
        await http.post(service, "/_arm", {"request": request, **arm}, 5)


async def _read_ledger(ctx: RunContext, conn: Any, schema: str) -> None:
    """Every charge as PostgreSQL holds it, into the history the checker judges."""
    charges = await ledger.charges_of(conn, schema)
    marked = ctx.choice("guard") == "redis-mark"  # only that guard leaves a mark to point at
    for c in charges:
        ctx.record(
            RUNNER,
            "ok",
            LEDGER_OP,
            key=c.order_id,
            value=str(c.charge_id),
            note=f"charge #{c.charge_id} of {c.order_id} by {c.instance} ({c.request_id})",
            data={
                "charge_id": c.charge_id,
                "instance": c.instance,
                "request": c.request_id,
                "at_ms": c.t_ms,
                **({"mark": mark_key(ctx.run_id, c.order_id)} if marked else {}),
            },
        )
    ctx.record(RUNNER, "ok", "ledger-read", key=f"{schema}.ledger", note=f"{len(charges)} charge(s)")


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """At most one charge per order (the ledger's rows); every successful reply a client
    got for an order names the same charge, and that charge is in the ledger."""
    read = next((op for op in ops if op.actor == RUNNER and op.f == "ledger-read"), None)
    if read is None:
        raise ValueError("the history has no read of the ledger")
    charges: dict[str, list[Op]] = defaultdict(list)
    answers: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.actor == RUNNER and op.f == LEDGER_OP:
            charges[op.key].append(op)
        elif op.f == "pay" and op.kind == "ok" and op.actor.startswith("client-"):
            answers[op.key].append(op)
    findings = _findings(charges, answers, ops)
    double = sorted((o for o, c in charges.items() if len(c) > 1), key=lambda o: _at(charges[o][1]))
    if double:
        order = double[0]
        first, second = charges[order][:2]
        clients = sorted(
            {op.actor for op in ops if op.f == "pay" and op.key == order and op.actor.startswith("client-")}
        )
        more = f"; {len(double) - 1} more order(s) charged twice" if len(double) > 1 else ""
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: {order} was charged {len(charges[order])} times: "
            f"{_charge(first)} and {_charge(second)}{more}",
            actors=tuple(
                dict.fromkeys((*clients, str(first.data.get("instance")), str(second.data.get("instance"))))
            ),
            keys=(*([str(first.data["mark"])] if "mark" in first.data else []), read.key),
            at_ms=_at(second),
            ops=(first.index, second.index),
            findings=tuple(findings),
        )
    inconsistent = [f for f in findings if f.startswith("inconsistent")]
    if inconsistent:
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: {inconsistent[0]}",
            keys=(read.key,),
            findings=tuple(findings),
        )
    total = sum(len(c) for c in charges.values())
    orders = len({op.key for op in ops if op.f == "pay"})
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {total} charge(s) for {orders} order(s), none charged twice; every answer consistent",
        keys=(read.key,),
        findings=tuple(findings),
    )


def _at(charge: Op) -> int:
    return int(charge.data.get("at_ms", charge.t_ms))


def _charge(c: Op) -> str:
    return (
        f"#{c.data.get('charge_id')} by {c.data.get('instance')} at t={_at(c)} ms ({c.data.get('request')})"
    )


def _findings(charges: dict[str, list[Op]], answers: dict[str, list[Op]], ops: Sequence[Op]) -> list[str]:
    out = []
    for order, replies in sorted(answers.items()):
        named = {str(op.data.get("charge_id")) for op in replies}
        in_ledger = {str(op.data.get("charge_id")) for op in charges.get(order, [])}
        if len(named) > 1:
            out.append(
                f"inconsistent answers for {order}: the client was told charges {', '.join(sorted(named))}"
            )
        elif named - in_ledger:
            out.append(f"inconsistent answer for {order}: charge {', '.join(named)} is not in the ledger")
    replays = sum(1 for op in ops if op.data.get("tick") == "replayed")
    conflicts = sum(1 for op in ops if op.data.get("tick") == "conflict")
    lost = sum(1 for op in ops if op.f == "pay" and op.kind == "info")
    takeovers = sum(1 for op in ops if op.f == "claim" and op.data.get("outcome") == "taken-over")
    crashes = sum(1 for op in ops if op.f == "crash")
    out.append(
        f"{replays} replayed answer(s), {conflicts} 409(s) while in flight, {lost} reply(ies) lost, "
        f"{takeovers} take-over(s) of a lapsed claim, {crashes} crash(es)"
    )
    unanswered = sorted(o for o in charges if o not in answers)
    if unanswered:
        out.append(f"charged but the client never got an answer: {', '.join(unanswered)}")
    return out


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
