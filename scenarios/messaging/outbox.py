"""``txn-outbox``: the local message table (transactional outbox, eBay's "BASE").

Service A (:mod:`scenarios.messaging.outbox_producer`, a process) writes each order and
its message row in ONE transaction on the first PostgreSQL (``postgres-1``), schema
``coordscope_<run>``: ``orders`` and ``outbox`` (Debezium's columns plus ``sent_at``).
A relay (:mod:`scenarios.messaging.relay`, a process) publishes unsent rows, oldest first,
to the stream ``coordscope:outbox:{<run>}:events`` and marks them sent — polling every
``poll_ms``, or woken by A's ``NOTIFY`` (``relay=notify``). Consumers ``B-1``, ``B-2``
(:mod:`scenarios.messaging.outbox_consumer`, a process each) read the stream through the
consumer group ``b`` and apply each message in one transaction on the other PostgreSQL
(``postgres-2``, schema ``coordscope_<run>_b``; a second schema of the only one when
there is one), recording its id in an ``inbox`` with its effect (``inbox=on``).

The run's client places ``messages`` orders (``o1``, ``o2``… — the message id is the
order id, the same in every op's ``data.msg``), 20 ms apart; then it waits, bounded,
until the outbox is drained and the group has read and acknowledged everything; then the
services stop and the stores are read into the history for the checker
(:mod:`scenarios.messaging.outbox_checker`). The outbox backlog (unsent rows, the
oldest's age) is read every 250 ms and recorded when it changes (``backlog``).

Faults, at the ``fault_at``-th order (or the next one when injected live):

- ``relay-crash-after-publish``: the relay SIGKILLs itself right after its ``XADD`` of
  that order's message, before marking it sent; the run restarts it (as an orchestrator
  would) and it publishes the row again: a duplicate in the stream, skipped by B's inbox
  — applied twice with ``inbox=off``;
- ``consumer-crash``: ``B-1`` SIGKILLs itself after applying the next message it gets
  (committed), before its ``XACK``: that entry, and the rest of its batch, stay pending
  at the dead consumer until another claims them (``XAUTOCLAIM``, idle over
  ``claim_idle_ms``) — the inbox drops the one already applied. ``B-1`` is not restarted:
  ``B-2`` does the claiming, which is the point; with ``consumers=1`` it is restarted, and
  its new life (a new consumer) claims them;
- ``broker-down``: the stream's Redis master is stopped (SIGSTOP) for ``fault_ms``. A
  keeps committing (it never talks to the broker); the relay's ``XADD`` times out and is
  retried: the backlog grows, then drains after the SIGCONT (an ``XADD`` that timed out
  may land all the same: a duplicate for the inbox). The stream lives on a master other
  than the control node that holds the run's history (one without a replica if any);
- ``rollback``: A's transaction for that order inserts both rows, then rolls back (a
  business failure): nothing may be published or applied for it.

Invariant: every committed business row has exactly one effect in B; nothing is
published for a rolled-back row.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from collectors.layouts.messaging import outbox_stream_key
from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import Environment, RunContext
from scenarios.kit.database import Database, connect, create_schema, two_databases
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.nemesis import pause
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service
from scenarios.messaging import outbox_stores as stores
from scenarios.messaging.outbox_checker import CLIENT, INVARIANT, PRODUCER, RELAY, check
from scenarios.messaging.outbox_consumer import GROUP

ACTOR_FAULTS = ("relay-crash-after-publish", "consumer-crash", "rollback")
GAP_MS = 20
"""Between two orders."""
ORDER_TIMEOUT_S = 5
BACKLOG_EVERY_S = 0.25

SPEC = ScenarioSpec(
    name="txn-outbox",
    title="Transactional outbox: the local message table",
    summary="Service A writes each order and its message row in one PostgreSQL transaction; a relay "
    "process publishes unsent rows to a Redis stream and marks them sent; consumers B-1, B-2 apply each "
    "message once, recording its id in an inbox in the same transaction as the effect, in the other "
    "PostgreSQL.",
    invariant=INVARIANT,
    params=(
        Param("messages", "30", "orders A commits (each with its message)", minimum=1, maximum=1000),
        Param(
            "relay",
            "poll",
            "poll: the relay looks every poll_ms; notify: woken by A's NOTIFY (LISTEN), plus a slow poll",
            choices=("poll", "notify"),
        ),
        Param(
            "inbox",
            "on",
            "on: B records each message id in an inbox with its effect, and skips a redelivery; off: "
            "every delivery applies (naive)",
            choices=("on", "off"),
        ),
        Param(
            "poll_ms",
            "100",
            "relay=poll: how often the relay looks for unsent rows",
            minimum=5,
            maximum=10_000,
        ),
        Param("consumers", "2", "consumer processes in B's group", minimum=1, maximum=4),
        Param(
            "claim_idle_ms",
            "1000",
            "a consumer claims entries pending this long (XAUTOCLAIM)",
            minimum=100,
            maximum=60_000,
        ),
        Param("fault_at", "10", "which order a fault given at start hits", minimum=1, maximum=1000),
        Param(
            "fault_ms",
            "2000",
            "broker-down: how long the stream's Redis is stopped",
            minimum=100,
            maximum=30_000,
        ),
    ),
    faults=(
        FaultSpec(
            "relay-crash-after-publish",
            "the relay is SIGKILLed after its XADD, before marking the row sent: published again",
        ),
        FaultSpec(
            "consumer-crash",
            "B-1 is SIGKILLed after applying, before XACK: its pending entries are claimed by another",
        ),
        FaultSpec(
            "broker-down",
            "the stream's Redis is stopped (SIGSTOP) for fault_ms: the outbox backlog grows, then drains",
            needs_local_cluster=True,
        ),
        FaultSpec(
            "rollback", "A's transaction inserts order and message, then rolls back: nothing published"
        ),
    ),
    show="A's outbox table (unsent rows, the oldest's age), the stream's pending entries per consumer, "
    "lanes for the client, A, the relay and each consumer; click a message to follow it from A's commit "
    "to B's effect",
    sources=(
        "the seed: a local message table written in the same transaction as the business row",
        "Dan Pritchett, BASE: An Acid Alternative (eBay, 2008); Debezium's outbox event router columns",
        "Redis Streams: consumer groups, XAUTOCLAIM",
    ),
    needs=("postgres",),
)


def broker_node(env: Environment) -> str:
    """Where the stream lives: a master other than the control node (stopping it must not
    stop the run's history), one without a replica when there is one."""
    others = [m for m in env.masters if m != env.control_node]
    lone = [m for m in others if m not in env.replicas.values()]
    return (lone or others or [env.control_node])[0]


def consumer_names(n: int) -> list[str]:
    return [f"B-{i + 1}" for i in range(n)]


async def run(ctx: RunContext) -> None:
    node = broker_node(ctx.env)
    if "broker-down" in ctx.faults and node == ctx.env.control_node:
        raise ScenarioError(
            "broker-down stops the stream's Redis, and the only master is the control node that holds "
            "the run's history: it needs a second master"
        )
    a, b = two_databases(ctx.run_id, ctx.env.postgres)
    consumers = consumer_names(ctx.number("consumers"))
    await ctx.set_actors([CLIENT, PRODUCER, RELAY, *consumers, NEMESIS])
    for db, ddl in ((a, stores.A_DDL), (b, stores.B_DDL)):
        ctx.cleanup_schema(db.target, db.schema)
        await create_schema(db.target, db.schema, ddl)
    stream = outbox_stream_key(ctx.run_id)
    ctx.cleanup(node, stream)
    broker = ctx.client(node)
    await broker.xgroup_create(stream, GROUP, id="0", mkstream=True)
    lab = _Lab(ctx, a, b, node)
    await lab.start(consumers)
    ctx.record(
        RUNNER, "info", "start",
        note=f"A: {a.name} ({a.schema}); B: {b.name} ({b.schema}); stream {stream} on {node}, group "
        f"{GROUP}; relay={ctx.choice('relay')}, inbox={ctx.choice('inbox')}",
    )  # fmt: skip
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=ACTOR_FAULTS)
    sampler = asyncio.create_task(lab.sample_backlog())
    try:
        await with_helpers(ctx, plan.arm, [lab.client(plan)], lab.broker_down(plan))
        for fault in [*plan.armed, *plan.scheduled]:
            ctx.record(RUNNER, "info", "fault-unused", value=fault, note=f"{fault} came after the last order")
        await asyncio.gather(*lab.background)
        await lab.settle()
    finally:
        for task in (sampler, *lab.watchers):
            task.cancel()
        await asyncio.gather(sampler, *lab.watchers, return_exceptions=True)
    ctx.record(RUNNER, "info", "drain", note="the client is done, the stores are settled: the services stop")
    await ctx.services.stop_all(timeout=5)
    await ctx.set_table(await stores.read(ctx, a, b, broker, stream))


def command_lines(
    a: Database,
    b: Database,
    redis_url: str,
    stream: str,
    relay: str,
    inbox: str,
    poll_ms: int,
    claim_idle_ms: int,
    narrate: bool = True,
) -> dict[str, tuple[str, list[str]]]:
    """Each role's module and arguments (``producer``, ``relay``, ``consumer``): the run's
    and the benchmark's processes are started alike."""
    quiet = [] if narrate else ["--narrate", "off"]
    redis = ["--redis", redis_url, "--stream", stream]
    a_db = ["--dsn", a.target.dsn, "--schema", a.schema, "--channel", a.schema]  # a NOTIFY channel per run
    module = "scenarios.messaging."
    return {
        "producer": (module + "outbox_producer", [*a_db, "--relay", relay, *quiet]),
        "relay": (module + "relay", [*a_db, *redis, "--mode", relay, "--poll-ms", str(poll_ms), *quiet]),
        "consumer": (
            module + "outbox_consumer",
            [
                "--dsn", b.target.dsn, "--schema", b.schema, *redis, "--inbox", inbox,
                "--claim-idle-ms", str(claim_idle_ms), *quiet,
            ],
        ),
    }  # fmt: skip


class _Lab:
    """The run's side: the services, the client placing orders, the faults it arms."""

    def __init__(self, ctx: RunContext, a: Database, b: Database, node: str) -> None:
        self.ctx, self.a, self.b, self.node = ctx, a, b, node
        self.http = ctx.closing(Http())
        self.stream = outbox_stream_key(ctx.run_id)
        self.background: list[asyncio.Task[None]] = []
        """The nemesis's windows (broker-down): the run waits for them before it settles."""
        self.watchers: list[asyncio.Task[None]] = []
        """Waiting for an armed process to crash (and come back): cancelled once settled."""
        self.answers: dict[str, str] = {}
        self.amounts: dict[str, int] = {}
        self.services: dict[str, Service] = {}
        self.backlog: int | None = None
        """The outbox's unsent rows when last recorded."""

    async def start(self, consumers: list[str]) -> None:
        """A, the relay and the consumers, all at once (the group exists already: whoever
        comes first, nothing is missed)."""
        ctx = self.ctx
        args = command_lines(
            self.a, self.b, ctx.env.target(self.node).url, self.stream, ctx.choice("relay"),
            ctx.choice("inbox"), ctx.number("poll_ms"), ctx.number("claim_idle_ms"),
        )  # fmt: skip
        started = await asyncio.gather(
            ctx.services.start(PRODUCER, "producer", *args["producer"]),
            # restarted as an orchestrator would: it publishes what it left unmarked
            ctx.services.start(RELAY, "relay", *args["relay"], restart=True),
            *(
                ctx.services.start(c, "consumer", *args["consumer"], restart=len(consumers) == 1)
                for c in consumers
            ),
        )
        self.services.update(zip([PRODUCER, RELAY, *consumers], started, strict=True))

    # ------------------------------------------------------------------ the client

    async def client(self, plan: FaultPlan) -> None:
        for n in range(1, self.ctx.number("messages") + 1):
            if self.ctx.stopping.is_set():
                return
            plan.step()
            msg = f"o{n}"
            fault = plan.take()
            if fault is not None:
                await self.arm(fault, msg)
            await self.order(msg, 10 + (n % 9) * 5)
            if fault == "rollback":
                self.ctx.record(NEMESIS, "info", "heal", value=fault, note=f"{msg} answered")
            await asyncio.sleep(GAP_MS / 1000)
            if n % 10 == 0:
                await self.table()

    async def order(self, msg: str, amount: int) -> None:
        self.amounts[msg] = amount
        span = {"msg": msg, "span": msg}
        self.ctx.record(CLIENT, "invoke", "order", key=msg, note=f"{msg}: order {amount} to A", data=span)
        reply = await self.http.post(self.services[PRODUCER], "/order", {"id": msg, "amount": amount},
                                     ORDER_TIMEOUT_S)  # fmt: skip
        outcome = str(reply.body.get("outcome", "")) if reply.status is not None else ""
        if reply.ok:
            self.ctx.record(
                CLIENT, "ok", "order", key=msg, value=outcome, note=f"{msg}: committed", data=span
            )
        elif outcome == "rolled-back":
            note = f"{msg}: rolled back by A (409)"
            self.ctx.record(CLIENT, "fail", "order", key=msg, value=outcome, note=note, data=span)
        elif reply.status is not None:
            why = reply.body.get("error", reply.status)
            self.ctx.record(CLIENT, "fail", "order", key=msg, value="failed", note=f"{msg}: {why}", data=span)
            outcome = "failed"
        else:
            outcome = "unknown"
            note = f"{msg}: no answer ({reply.error}): committed or not, A's database says"
            self.ctx.record(CLIENT, "info", "order", key=msg, value=outcome, note=note,
                            data=span | {"tick": "timeout"})  # fmt: skip
        self.answers[msg] = outcome

    # ------------------------------------------------------------------ faults

    async def arm(self, fault: str, msg: str) -> None:
        target, body, note = {
            "rollback": (PRODUCER, {"fault": "rollback", "msg": msg},
                         f"A rolls {msg}'s transaction back after inserting both rows"),
            "relay-crash-after-publish": (RELAY, {"fault": "crash-after-publish", "msg": msg},
                                          f"the relay dies after publishing {msg}, before marking it sent"),
            "consumer-crash": ("B-1", {"fault": "crash-before-ack"},
                               "B-1 dies after applying its next message, before XACK"),
        }[fault]  # fmt: skip
        service = self.services[target]
        before = service.exits
        reply = await self.http.post(service, "/_arm", body, 5)
        if not reply.ok:
            raise ScenarioError(f"could not arm {target}: {reply.error or reply.status}")
        self.ctx.record(NEMESIS, "info", "fault", key=msg, value=fault, note=note, data={"msg": msg})
        if fault != "rollback":  # the rollback's window closes with its answer (see client)
            self.watchers.append(asyncio.create_task(self._heal_after_crash(fault, service, before)))

    async def _heal_after_crash(self, fault: str, service: Service, before: int) -> None:
        """Close the fault's window when the armed process has died — and, when the run
        restarts it, once it serves again; polled (another process's fate), bounded."""
        note = f"{fault} never struck: {service.name} did not reach its crash point"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if service.exits > before and not service.restart:
                    note = f"{service.name} is dead: what it held pending waits to be claimed"
                    break
                back = service.exits > before and service.running
                if back and (await self.http.get(service, "/healthz", 1)).ok:
                    note = f"{service.name} is back (pid {service.pid})"
                    break
                await asyncio.sleep(0.02)
        finally:  # cancelled when the run settled first
            if service.exits > before and note.startswith(fault):
                note = f"{service.name} crashed; the run settled before it served again"
            self.ctx.record(NEMESIS, "info", "heal", value=fault, note=note)

    async def broker_down(self, plan: FaultPlan) -> None:
        await plan.fired("broker-down")
        if self.node == self.ctx.env.control_node:
            self.ctx.record(RUNNER, "info", "fault-refused", value="broker-down",
                            note="the stream shares the control node: it is not stopped")  # fmt: skip
            return
        # its own task: the window lasts fault_ms even when the client is done sooner
        self.background.append(
            asyncio.create_task(pause(self.ctx, "broker-down", self.node, self.ctx.number("fault_ms")))
        )

    # ------------------------------------------------------------------ the end

    async def sample_backlog(self) -> None:
        """The outbox backlog, read every 250 ms, recorded when it changes."""
        async with await connect(self.a.target, autocommit=True) as conn:
            while True:
                await self.look_at_backlog(conn)
                await asyncio.sleep(BACKLOG_EVERY_S)

    async def look_at_backlog(self, conn: Any, always: bool = False) -> None:
        unsent, oldest_ms = await stores.backlog(conn, self.a.schema)
        if unsent == self.backlog and not always:
            return
        self.backlog = unsent
        oldest = f", the oldest {oldest_ms} ms old" if unsent else ""
        note = f"outbox backlog: {unsent} unsent row(s){oldest}"
        data = {"unsent": unsent, "oldest_ms": oldest_ms}
        self.ctx.record(RUNNER, "info", "backlog", value=str(unsent), note=note, data=data)

    async def settle(self) -> None:
        """Wait (bounded) until the outbox is drained and the group has read and
        acknowledged every entry."""
        ctx = self.ctx
        limit_s = 15 + ctx.number("fault_ms") / 1000 + 3 * ctx.number("claim_idle_ms") / 1000
        deadline = time.monotonic() + limit_s
        broker = ctx.client(self.node)
        left = "not looked yet"
        async with await connect(self.a.target, autocommit=True) as conn:
            while time.monotonic() < deadline:
                left = await stores.unsettled(conn, self.a.schema, broker, self.stream)
                if not left:
                    break
                await asyncio.sleep(0.05)
            else:
                ctx.record(RUNNER, "info", "unsettled", note=f"after {limit_s:.0f} s: {left}")
            await self.look_at_backlog(conn, always=True)

    async def table(self) -> None:
        rows = [["message", "amount", "client's answer"]]
        for msg, amount in self.amounts.items():
            rows.append([msg, str(amount), self.answers.get(msg, "…")])
        await self.ctx.set_table(rows)


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
