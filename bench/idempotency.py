"""Idempotency benchmark: payments/s through three real payment-service processes,
``guard=redis-mark`` against ``guard=none``, in the same run.

Starts its own local cluster (the same code as ``coordscope up``) in a temporary
folder and, per guard, three real ``scenarios.idempotency.payment_service``
processes, as the idempotency scenario does: each guard with its own PostgreSQL
schema, the marks on ``redis-1`` (the scenario's mark node, which has a replica),
narration off (``--narrate off``: the figures are the guard's cost, not the
history's) and no simulated provider work (``--work-ms 0`` unless told: the
scenario's 20 ms sleep per charge would hide the guard). A run hash with a live
heartbeat per guard keeps the services up while it measures.

Load: 16 concurrent clients send payments of distinct order ids to the three
instances round-robin, through ``scenarios.kit.http.Http`` (the client the
scenario uses; the same for both guards, a fresh one per round). Rounds alternate none, redis-mark,
none, ...; each round is bounded in payments and in seconds. Reported:

- the median payments/s of each guard and the median of the per-round ratios
  redis-mark / none — goal >= 0.8;
- p50 / p99 latency per payment (client side), every round of a guard pooled;
- the round trips: the commands the mark path sends per payment (``INFO
  commandstats`` deltas on the marks' node: EVALSHA/EVAL calls per payment),
  the server-side µs per call, and what the scripts run inside;
- the raw ceiling, for context: the same ledger row INSERTed straight from this
  process with psycopg (``ledger.charge``, the services' own call), at the same
  concurrency — what share of a payment is the database;
- CPU per payment, by process (this client, the services, Redis, PostgreSQL;
  ``/proc/<pid>/task/*/schedstat``): on a small machine the rate is set by CPU.

After every round it checks what it measured: every reply was a fresh 200 for
its order, every order of the round is charged exactly once in the ledger (rows
counted in PostgreSQL), and under redis-mark every mark is COMPLETED; otherwise
it fails loudly (exit 1). Every loop is bounded in count and time; the services
and the cluster are stopped by PID, on Ctrl-C or an error too.

    .venv/bin/python -m bench.idempotency [--quick] [--rounds 10] [--payments 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from redis.asyncio import Redis

from app.cluster import ClusterInfo
from app.cluster_member import Member, processes_of
from bench.lab import on_own_cluster
from collectors.targets import PostgresTarget
from scenarios.idempotency import ledger
from scenarios.idempotency.marks import mark_key
from scenarios.kit.clients import redis_client
from scenarios.kit.database import connect, create_schema, schema_for
from scenarios.kit.history import RunRecord
from scenarios.kit.http import Http
from scenarios.kit.rounds import ELSEWHERE, Meter, Rounds, percentile, rate_line
from scenarios.kit.rounds import Round as BaseRound
from scenarios.kit.services import Service, ServiceSet

MODULE = "scenarios.idempotency.payment_service"
GUARDS = ("none", "redis-mark")
INSTANCES = 3
AMOUNT = 100
REQUEST_TIMEOUT_S = 10.0
LEASE_MS = 2000
MARK_TTL_MS = 600_000
"""Long enough that every mark of a round is still there when the round is checked."""
GOAL = 0.8
SENT = ("evalsha", "eval", "script|load", "script")
"""What a client sends for a mark; ``INFO commandstats`` also counts, apart, every
command a script runs inside (``hset``, ``pexpire``, ``time``...)."""
NOT_COUNTED = ("info", "replconf")
"""Our own snapshots, and the replica's acknowledgements."""

"""Busy CPU time not spent by any process above: other programs, and interrupts (some of
them our own network traffic's). Much of it means another program disturbed the run."""

Pay = Callable[[int, int, str], Awaitable[str | None]]
"""``pay(client, i, order)``: one payment; None, or what went wrong."""
Stats = dict[str, tuple[int, int]]
"""Command -> (calls, µs) on a Redis node."""


class BenchError(Exception):
    """What was measured is wrong (a double charge, a lost reply, a mark not completed)."""


# ---------------------------------------------------------------------- figures


@dataclass
class Round(BaseRound):
    commands: Stats
    """On the marks' node, during the load."""


@dataclass
class Side(Rounds):
    """One guard's rounds (or the raw ceiling's): ``count`` is payments."""

    label: str
    rounds: list[Round] = field(default_factory=list)

    def commands(self) -> Stats:
        total: Stats = {}
        for r in self.rounds:
            for name, (calls, usec) in r.commands.items():
                c, u = total.get(name, (0, 0))
                total[name] = (c + calls, u + usec)
        return total


# ---------------------------------------------------------------------- the load


async def drive(
    pay: Pay, prefix: str, payments: int, seconds: float, clients: int
) -> tuple[list[str], list[float], float, list[str]]:
    """``clients`` tasks taking payments 0, 1, 2, ... in turn: at most ``payments``, and
    none started after ``seconds``. Returns (the orders sent, their latencies in ms, the
    seconds it took, what went wrong)."""
    orders: list[str] = []
    latencies: list[float] = []
    failures: list[str] = []
    taken = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds

    async def client(c: int) -> None:
        while time.perf_counter() < deadline:
            i = next(taken)
            if i >= payments:
                return
            order = f"{prefix}{i}"
            t0 = time.perf_counter()
            wrong = await pay(c, i, order)
            latencies.append((time.perf_counter() - t0) * 1000)
            orders.append(order)
            if wrong is not None:
                failures.append(f"{order}: {wrong}")

    await asyncio.gather(*(client(c) for c in range(clients)))
    return orders, latencies, time.perf_counter() - started, failures


def through_services(http: Http, services: Sequence[Service]) -> Pay:
    async def pay(c: int, i: int, order: str) -> str | None:
        service = services[i % len(services)]  # round-robin, per request
        body = {"order_id": order, "amount": AMOUNT, "request_id": f"{order}:1", "client": f"bench-{c}"}
        reply = await http.post(service, "/pay", body, REQUEST_TIMEOUT_S)
        if reply.status != 200:
            return f"{service.name} answered {reply.status} {reply.error} {reply.body}"[:300]
        if reply.body.get("order_id") != order or reply.body.get("replayed"):
            return f"{service.name} answered {reply.body}"[:300]
        return None

    return pay


def straight_to_the_database(
    conns: Sequence[psycopg.AsyncConnection[tuple[object, ...]]], schema: str
) -> Pay:
    async def pay(c: int, i: int, order: str) -> str | None:
        await ledger.charge(conns[c], schema, order, AMOUNT, "raw", f"{order}:1", i)
        return None

    return pay


# ---------------------------------------------------------------------- what the stores hold


async def commandstats(client: Redis) -> Stats:
    info: dict[str, Any] = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(stats["calls"]), int(stats["usec"]))
        for name, stats in info.items()
        if name.startswith("cmdstat_") and isinstance(stats, dict)
    }


def delta(after: Stats, before: Stats) -> Stats:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if name not in NOT_COUNTED and calls > c0:
            out[name] = (calls - c0, usec - u0)
    return out


async def check_ledger(db: PostgresTarget, schema: str, prefix: str, orders: list[str]) -> None:
    """Every order sent in the round is charged exactly once, and no other order of it is."""
    query = sql.SQL(
        "SELECT order_id, count(*) FROM {}.{} WHERE starts_with(order_id, %s) GROUP BY order_id"
    ).format(sql.Identifier(schema), sql.Identifier(ledger.LEDGER))
    async with await connect(db, autocommit=True) as conn:
        cur = await conn.execute(query, (prefix,))
        rows = {str(r[0]): int(str(r[1])) for r in await cur.fetchall()}
    twice = sorted(o for o, n in rows.items() if n != 1)
    missing = sorted(set(orders) - set(rows))
    extra = sorted(set(rows) - set(orders))
    if twice or missing or extra or sum(rows.values()) != len(orders):
        raise BenchError(
            f"ledger {schema}: {len(orders)} payments sent, {sum(rows.values())} rows for "
            f"{len(rows)} orders; charged more than once: {twice[:5]}, never charged: "
            f"{missing[:5]}, charged but not sent: {extra[:5]}"
        )


async def check_marks(marks: Redis, run_id: str, orders: list[str]) -> None:
    """Every mark of the round is COMPLETED."""
    states: list[Any] = []
    for start in range(0, len(orders), 500):
        pipe = marks.pipeline(transaction=False)
        for order in orders[start : start + 500]:
            pipe.hget(mark_key(run_id, order), "state")
        states += await pipe.execute()
    wrong = [(o, s) for o, s in zip(orders, states, strict=True) if s != b"COMPLETED"]
    if wrong:
        raise BenchError(f"{len(wrong)} of {len(orders)} marks are not COMPLETED, e.g. {wrong[:5]}")


# ---------------------------------------------------------------------- the lab


def _pid(member: Member) -> Callable[[], list[int]]:
    return lambda: [member.pid]


@dataclass
class Guarded:
    """One guard's three instances, its run and its ledger."""

    guard: str
    run_id: str
    schema: str
    services: list[Service]
    side: Side


class Lab:
    """What the benchmark starts on the cluster, and stops (by PID) in :meth:`close`."""

    def __init__(self, info: ClusterInfo, args: argparse.Namespace) -> None:
        self.info = info
        self.args = args
        targets = {t.id: t for t in info.redis_targets()}
        self.marks_node, self.control_node = info.masters[0], info.masters[-1]
        self.marks_target = targets[self.marks_node.name]
        self.control_target = targets[self.control_node.name]
        self.db = info.pg_targets()[0]
        self.control = redis_client(self.control_target)
        self.marks = redis_client(self.marks_target)
        self.tag = f"{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
        self.guards: dict[str, Guarded] = {}
        self.raw = Side("raw INSERT")
        self.raw_schema = schema_for(f"bench-idempotency-raw-{self.tag}")
        self.conns: list[psycopg.AsyncConnection[tuple[object, ...]]] = []
        self._service_sets: list[ServiceSet] = []
        self._records: list[RunRecord] = []
        self._heartbeats: list[asyncio.Task[None]] = []
        pg = info.member(self.db.id)
        replicas = [m for m in info.members if m.kind == "redis" and m.master == self.marks_node.name]
        self.groups: dict[str, Callable[[], list[int]]] = {
            "bench client (this process)": lambda: [os.getpid()],
            **{f"services, {g}": self._pids_of(g) for g in GUARDS},
            f"{self.marks_node.name} (the marks)": _pid(self.marks_node),
            **{f"{m.name} (its replica)": _pid(m) for m in replicas},
            f"{self.control_node.name} (control: heartbeats)": _pid(self.control_node),
            "postgres (every process)": lambda: processes_of(pg),
        }

    def _pids_of(self, guard: str) -> Callable[[], list[int]]:
        def pids() -> list[int]:
            g = self.guards.get(guard)
            return [s.pid for s in g.services if s.pid] if g else []

        return pids

    async def start(self) -> None:
        for guard in GUARDS:
            run_id = f"bench-idempotency-{guard}-{self.tag}"
            schema = schema_for(run_id)
            await create_schema(self.db, schema, ledger.ddl(unique=False))
            # the services stop by themselves unless their run is "running" with a fresh heartbeat
            record = RunRecord(self.control, run_id)
            await record.create("idempotency", {"guard": guard}, [], "bench/idempotency.py")
            self._records.append(record)
            self._heartbeats.append(asyncio.create_task(record.heartbeat(lambda: {}, asyncio.Event())))
            services = ServiceSet(run_id, self.control_target.url, time.monotonic(), control=self.control)
            self._service_sets.append(services)
            args = [
                "--guard", guard, "--pg", self.db.dsn, "--schema", schema,
                "--redis", self.marks_target.url, "--lease-ms", str(LEASE_MS),
                "--mark-ttl-ms", str(MARK_TTL_MS), "--work-ms", str(self.args.work_ms), "--narrate", "off",
            ]  # fmt: skip
            started = await asyncio.gather(
                *(services.start(f"pay-{i + 1}", "payment-service", MODULE, args) for i in range(INSTANCES))
            )
            self.guards[guard] = Guarded(guard, run_id, schema, list(started), Side(guard))
        await create_schema(self.db, self.raw_schema, ledger.ddl(unique=False))
        self.conns = [await connect(self.db) for _ in range(self.args.clients)]

    async def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await conn.close()
        for services in self._service_sets:  # SIGTERM by PID (process group), SIGKILL what overstays
            with contextlib.suppress(Exception):
                await services.stop_all(timeout=10)
        for task in self._heartbeats:
            task.cancel()
        await asyncio.gather(*self._heartbeats, return_exceptions=True)
        for record in self._records:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(record.finish("done", None), 5)
        await self.marks.aclose()
        await self.control.aclose()

    async def _measure(self, side: Side, pay: Pay, prefix: str, payments: int) -> list[str]:
        meter = Meter(self.groups)
        meter.start()
        stats0 = await commandstats(self.marks)
        orders, latencies, took, failures = await drive(
            pay, prefix, payments, self.args.seconds, self.args.clients
        )
        stats1 = await commandstats(self.marks)
        cpu = meter.stop()
        if failures:
            raise BenchError(
                f"{side.label}: {len(failures)} of {len(orders)} payments failed: {failures[:3]}"
            )
        if not orders:
            raise BenchError(f"{side.label}: no payment was sent within {self.args.seconds} s")
        side.rounds.append(
            Round(
                count=len(orders),
                seconds=took,
                cpu=cpu,
                latencies_ms=latencies,
                commands=delta(stats1, stats0),
            )
        )
        return orders

    async def guard_round(self, guard: str, n: int, payments: int) -> float:
        """One round through the guard's instances, checked; its payments/s."""
        g = self.guards[guard]
        prefix = f"{guard}-r{n}-"
        # A fresh client per round, for both guards alike. One client for the whole run
        # failed twice over: uvicorn closes a keep-alive connection idle for 5 s, and a
        # guard's connections idle while the other guard's round runs (a request written
        # on a connection the server is closing is lost: ReadError); and a client holding
        # both guards' connections spent ~0.95 ms of CPU per payment instead of ~0.67-0.70
        # (with a limit of 64 connections or 128 alike; one client per guard did not).
        http = Http()
        try:
            orders = await self._measure(g.side, through_services(http, g.services), prefix, payments)
        finally:
            await http.aclose()
        await check_ledger(self.db, g.schema, prefix, orders)
        if guard == "redis-mark":
            await check_marks(self.marks, g.run_id, orders)
        return g.side.rounds[-1].rate

    async def raw_round(self, n: int, payments: int) -> None:
        prefix = f"raw-r{n}-"
        orders = await self._measure(
            self.raw, straight_to_the_database(self.conns, self.raw_schema), prefix, payments
        )
        await check_ledger(self.db, self.raw_schema, prefix, orders)


@dataclass
class Result:
    none: Side
    mark: Side
    raw: Side
    ratios: list[float]
    marks_node: str


async def bench(info: ClusterInfo, args: argparse.Namespace) -> Result:
    lab = Lab(info, args)
    try:
        await lab.start()
        # warm up (not counted): connections opened, the scripts loaded, every path run once
        warm = max(48, args.payments // 10)
        for guard in GUARDS:
            await lab.guard_round(guard, 0, warm)
            lab.guards[guard].side.rounds.clear()
        await lab.raw_round(0, warm)
        lab.raw.rounds.clear()
        ratios = []
        for n in range(1, args.rounds + 1):
            none = await lab.guard_round("none", n, args.payments)
            mark = await lab.guard_round("redis-mark", n, args.payments)
            ratios.append(mark / none)
            await lab.raw_round(n, args.payments)
        return Result(
            lab.guards["none"].side, lab.guards["redis-mark"].side, lab.raw, ratios, lab.marks_node.name
        )
    finally:
        await lab.close()


# ---------------------------------------------------------------------- the report


def line(label: str, value: str) -> None:
    print(f"  {label:<56}{value}")


def report(r: Result, args: argparse.Namespace) -> None:
    none, mark, raw = r.none, r.mark, r.raw
    ratio = statistics.median(r.ratios)
    print(
        f"payments/s through {INSTANCES} payment-service processes per guard (round-robin), "
        f"{args.clients} concurrent clients, work_ms={args.work_ms};"
    )
    print("narration off (--narrate off): the figures are the guard's cost, not the history's.")
    print(
        f"median of {len(r.ratios)} alternating rounds (none, redis-mark, ...) of <= {args.payments} "
        f"payments / <= {args.seconds:g} s each; latency per payment at the client:"
    )
    line("guard=none", rate_line(none))
    line("guard=redis-mark", rate_line(mark))
    line(
        f"ratio redis-mark / none (goal >= {GOAL})",
        f"{ratio:7.2f}x  (rounds {min(r.ratios):.2f}-{max(r.ratios):.2f})"
        + ("" if ratio >= GOAL else "  BELOW THE GOAL"),
    )
    line("  per round: none", " ".join(f"{x:,.0f}" for x in none.rates))
    line("  per round: redis-mark", " ".join(f"{x:,.0f}" for x in mark.rates))
    line("  per round: ratio", " ".join(f"{x:.2f}" for x in r.ratios))
    print("raw ceiling: the ledger INSERT alone (ledger.charge via psycopg, same concurrency):")
    line("INSERTs", rate_line(raw))
    cpu = [side.cpu_ms_per_op() for side in (none, mark, raw)]
    pg = "postgres (every process)"
    line(
        "the database's share of a payment (guard=none)",
        f"{100 * percentile(raw.latencies, 50) / percentile(none.latencies, 50):3.0f}% of its p50 latency, "
        f"{100 * cpu[0].get(pg, 0.0) / sum(cpu[0].values()):.0f}% of its CPU",
    )
    print(f"round trips of the mark path on {r.marks_node} ({mark.count:,} payments, INFO commandstats):")
    cmds = mark.commands()
    sent = {k: v for k, v in cmds.items() if k in SENT}
    inside = {k: v for k, v in cmds.items() if k not in SENT}
    for name, (calls, usec) in sorted(sent.items()):
        line(
            f"{name.upper()} (sent by the services)",
            f"{calls / mark.count:5.2f} per payment, {usec / calls:5.1f} µs per call on the server",
        )
    trips = sum(c for c, _ in sent.values()) / mark.count
    line("commands sent per payment (goal <= 2)", f"{trips:5.2f}")
    if inside:
        line(
            "run inside the scripts, per payment",
            ", ".join(f"{k} {c / mark.count:.1f}" for k, (c, _) in sorted(inside.items())),
        )
    line(f"commands on {r.marks_node} under guard=none", f"{sum(c for c, _ in none.commands().values()):5d}")
    print("CPU per payment, ms (all of it shares this machine's cores):")
    width = max(len(s.label) for s in (none, mark, raw))
    line("", "   ".join(f"{s.label:>{width}}" for s in (none, mark, raw)))
    for group in cpu[0]:
        line(group, "   ".join(f"{c.get(group, 0.0):>{width}.3f}" for c in cpu))
    line("the whole machine", "   ".join(f"{sum(c.values()):>{width}.3f}" for c in cpu))
    elsewhere = [
        sum(x.cpu.get(ELSEWHERE, 0.0) for x in s.rounds) / sum(x.seconds for x in s.rounds)
        for s in (none, mark, raw)
    ]
    line(
        f"{ELSEWHERE}, in cores on average",
        "   ".join(f"{e:>{width}.2f}" for e in elsewhere)
        + ("  (busy: noisy figures)" if max(elsewhere) > 0.25 else ""),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (well under a minute)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of each guard (10; quick: 5)")
    parser.add_argument("--payments", type=int, help="at most this many per round (1500; quick: 300)")
    parser.add_argument("--seconds", type=float, help="at most this long per round (10; quick: 5)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--work-ms", type=int, default=0, help="the provider's simulated work per charge (0)")
    args = parser.parse_args()
    rounds, payments, seconds = (5, 300, 5.0) if args.quick else (10, 1500, 10.0)
    args.rounds = args.rounds or rounds
    args.payments = args.payments or payments
    args.seconds = args.seconds or seconds
    return on_own_cluster(bench, report, args, (BenchError,))


if __name__ == "__main__":
    sys.exit(main())
