"""Transactions benchmark: transfers/s of coordscope's two-phase commit against one local
transaction in one database, and against psycopg's two-phase protocol by hand, in the
same run.

Starts its own local cluster (the same code as ``coordscope up``) in a temporary folder:
``postgres-1`` and ``postgres-2`` hold the accounts, ``zookeeper`` the coordinator's log,
the last Redis master the run hashes (a live heartbeat keeps the services up) and the
services' narration. Every side has schemas of its own, seeded alike: ``--accounts`` (64)
accounts of 1,000,000 on each of its two participants. A transfer moves 1 from a random
account of one participant to a random account of the other (direction at random). The
sides:

- ``local``, the raw ceiling: the 2PC branches' statements — per participant, in the
  participants' fixed order, the row's ``UPDATE`` and its ``applied`` row's ``INSERT``
  (``accounts.TWO_PC_DDL``, the coordinator's own SQL) — as ONE local transaction
  (``BEGIN`` ... ``COMMIT``) in ONE database: the two participants are two schemas of
  ``postgres-1`` (as ``accounts.participants`` makes them for a single server);
- ``by-hand``: psycopg's two-phase API straight from this process, one connection per
  client and server: ``tpc_begin(gid)``, ``UPDATE``, ``INSERT``, ``tpc_prepare()`` on
  ``postgres-1`` then ``postgres-2``, then ``tpc_commit()`` on both at once — no
  coordinator process, no log (``lock_timeout`` is set once per connection);
- ``by-hand+log``: the same, and the COMMIT decision logged before phase two — a
  znode per transaction in ZooKeeper (kazoo's blocking ``create`` in a thread): the
  least a two-phase commit must do to finish its branches after a crash. The goal is
  measured against this side: the same protocol done by hand;
- ``2pc``: coordscope's coordinator (``scenarios.transactions.coordinator``, started
  through ``ServiceSet`` with the arguments ``txn-2pc`` gives it, ``--recovery on``),
  ``POST /transfer`` over HTTP (``scenarios.kit.http.Http``, the scenario's client): each
  branch in one round trip, its COMMIT waited for on the ZooKeeper log (its other two
  log writes and its narration are not waited for);
- ``tcc``: ``txn-tcc``'s coordinator and its two participant processes (Try / Confirm
  over HTTP, Seata's fence on).

Load: ``--clients`` (4) concurrent clients, then 1 (serial), in this process (asyncio),
taking transfers 0, 1, 2, ... in turn: at most ``--transfers`` a round and none started
after ``--seconds``. Per concurrency, a warm-up round of each side (not counted), then
``--rounds`` rounds in which the sides alternate (the first one rotates). Reported per
concurrency: each side's median transfers/s, p50 / p99 latency at the client, the
medians of the per-round ratios to ``local``, ``by-hand`` and ``by-hand+log`` (goal: 2pc
/ by-hand+log >= 0.5, our 2PC within 2x of the cost of the same protocol by hand), and
CPU per transfer by process (``/proc/<pid>/task/*/schedstat``): this client, the
services, each PostgreSQL, ZooKeeper, the control Redis. Then where a serial 2PC
transfer's time goes: the by-hand side's p50, and each thing the coordinator adds,
probed alone (serial, bounded) — the HTTP hop (``GET /healthz`` on the coordinator), the
log write it waits for (through kazoo), and what its narration would cost were each op
an ``XADD`` of its own (as many as the run's history holds per transfer).

After every round it checks what it measured: every transfer answered committed; on
each participant the round's transfers are exactly those applied; every balance is
its seed plus what was applied to it; the money of both participants is what was
seeded; nothing of the side is left prepared (or frozen, for TCC). Otherwise it fails
loudly (exit 1).

At the end it rolls back anything of ours still prepared, drops the schemas, removes
the coordinator's log (``/coordscope/2pc/<run>``) and the runs' keys, stops the services
(by PID) and the cluster. Every loop is bounded in count and time.

    .venv/bin/python -m bench.transactions [--quick] [--rounds 6] [--seconds 2.5] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import secrets
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from kazoo.client import KazooClient
from psycopg import sql
from redis.asyncio import Redis

from app.cluster import ClusterInfo
from app.cluster_member import Member, processes_of
from bench.lab import on_own_cluster
from collectors.layouts import coordscope
from collectors.targets import PostgresTarget
from scenarios.kit.catalogue import ScenarioError
from scenarios.kit.cleanup import remove_tree
from scenarios.kit.clients import redis_client
from scenarios.kit.database import create_schema, drop_schema, roll_back_prepared
from scenarios.kit.history import RunRecord
from scenarios.kit.http import Http
from scenarios.kit.rounds import ELSEWHERE, Meter, Round, Rounds, cpu_seconds, percentile, rate_line
from scenarios.kit.services import Service, ServiceSet
from scenarios.transactions import accounts, tcc, two_phase
from scenarios.transactions.accounts import Participant
from scenarios.transactions.transfers import Transfer

BALANCE = 1_000_000
ACCOUNTS = 64
"""Accounts per participant (``--accounts``): enough that row locks rarely meet."""
AMOUNT = 1
LOCK_TIMEOUT_MS = 10_000
TRY_TIMEOUT_MS = 5_000
"""TCC's Try timeout: long enough that no Try of a loaded round times out."""
REQUEST_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5
GOAL = 0.5
"""2pc / by-hand+log: our two-phase commit within 2x of the same protocol done by hand."""
GOAL_SIDE = "by-hand+log"
PROBE_COUNT = 300
PROBE_SECONDS = 1.5
CLIENT = "bench client (this process)"
SERVICES = "service processes (coordinator, participants)"
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class BenchError(Exception):
    """What was measured is wrong (a transfer not committed, money not conserved, a branch left prepared)."""


# ---------------------------------------------------------------------- the statements


@dataclass(frozen=True)
class Statements:
    """A participant's two statements, composed once (the coordinator's own SQL)."""

    update: sql.Composed
    insert: sql.Composed

    @classmethod
    def of(cls, schema: str) -> Statements:
        s = sql.Identifier(schema)
        return cls(
            sql.SQL("UPDATE {}.accounts SET balance = balance + %s WHERE id = %s").format(s),
            sql.SQL("INSERT INTO {}.applied (txn, account, delta) VALUES (%s, %s, %s)").format(s),
        )


def legs(t: Transfer) -> list[tuple[str, str, int]]:
    """(participant, account, delta) of both legs, in the participants' fixed order (the
    coordinator's: every transaction locks the first participant's row first)."""
    return sorted([(t.source[0], t.source[1], -t.amount), (t.target[0], t.target[1], t.amount)])


async def work(conn: Conn, st: Statements, txn: str, account: str, delta: int) -> None:
    cur = await conn.execute(st.update, (delta, account))
    if cur.rowcount != 1:
        raise BenchError(f"{txn}: no account {account}")
    await conn.execute(st.insert, (txn, account, delta))


async def connect(target: PostgresTarget, autocommit: bool) -> Conn:
    """A connection of this process; ``lock_timeout`` set once for its whole life."""
    return await psycopg.AsyncConnection.connect(
        target.dsn,
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c lock_timeout={LOCK_TIMEOUT_MS}",
        application_name="bench-transactions",
    )


# ---------------------------------------------------------------------- the sides


@dataclass
class Figures(Rounds):
    """One side's rounds at one concurrency."""

    rounds: list[Round] = field(default_factory=list)


class Side:
    """What is compared: how a transfer is made, on which participants, by which processes.
    The base makes and checks 2PC's tables (``accounts.TWO_PC_DDL``)."""

    name = ""
    label = ""

    def __init__(self, run_id: str, parts: list[Participant], accounts_each: int) -> None:
        self.run_id = run_id
        self.parts = parts
        self.accounts = accounts_each
        self.prefix = coordscope.branch_gid_prefix(run_id)
        self.figures: dict[int, Figures] = {}
        self.sent = 0
        """Transfers made through it, warm-ups too."""

    def pids(self) -> list[int]:
        """Its own processes, for the CPU table."""
        return []

    async def start(self, clients: int) -> None:
        """Schemas created and seeded, then whatever serves ``clients`` clients."""
        await self.create_tables()

    async def create_tables(self) -> None:
        ids = accounts.account_ids(self.accounts)
        for p in self.parts:
            await create_schema(p.target, p.schema, accounts.TWO_PC_DDL)
            async with await connect(p.target, autocommit=True) as conn:
                await conn.execute(accounts.seed_sql(p.schema, ids, BALANCE, tcc=False))

    async def begin_round(self) -> None:
        """Before a round's load (not timed)."""

    async def end_round(self) -> None:
        """After a round's load (not timed)."""

    async def transfer(self, client: int, t: Transfer) -> str | None:
        """One transfer: None, or what went wrong."""
        raise NotImplementedError

    async def check(self, prefix: str, sent: list[Transfer]) -> None:
        """Every transfer of the round applied on both participants, balances that match
        their ``applied`` rows, the money conserved, nothing of the side left prepared."""
        want = {t.txn for t in sent}
        total = 0
        problems: list[str] = []
        for p in self.parts:
            async with await connect(p.target, autocommit=True) as conn:
                schema = sql.Identifier(p.schema)
                cur = await conn.execute(
                    sql.SQL("SELECT txn FROM {}.applied WHERE starts_with(txn, %s)").format(schema), (prefix,)
                )
                got = {str(r[0]) for r in await cur.fetchall()}
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT (SELECT coalesce(sum(balance), 0) FROM {s}.accounts), "
                        "(SELECT count(*) FROM {s}.accounts a LEFT JOIN "
                        "(SELECT account, sum(delta) AS d FROM {s}.applied GROUP BY account) x "
                        "ON x.account = a.id WHERE a.balance <> %s + coalesce(x.d, 0))"
                    ).format(s=schema),
                    (BALANCE,),
                )
                row = await cur.fetchone()
                assert row is not None
                cur = await conn.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", (self.prefix,)
                )
                doubt = [str(r[0]) for r in await cur.fetchall()]
            total += int(row[0])
            if got != want:
                problems.append(
                    f"{p.name}: {len(want)} transfers sent, {len(got)} applied "
                    f"(missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]})"
                )
            if int(row[1]):
                problems.append(f"{p.name}: {row[1]} account(s) whose balance is not seed + applied deltas")
            if doubt:
                problems.append(f"{p.target.id}: {len(doubt)} branch(es) still prepared, e.g. {doubt[:2]}")
        self._conserved(total, problems, prefix)

    def _conserved(self, total: int, problems: list[str], prefix: str) -> None:
        seeded = BALANCE * self.accounts * len(self.parts)
        if total != seeded:
            problems.append(f"the participants hold {total}, {seeded} was seeded ({total - seeded:+d})")
        if problems:
            raise BenchError(f"{self.label}, after {prefix}*: " + "; ".join(problems))

    async def close(self) -> None:
        """Stop what it started (its schemas are dropped by :meth:`drop`)."""

    async def drop(self) -> None:
        for p in self.parts:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(roll_back_prepared(p.target.dsn, self.prefix), 10)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drop_schema(p.target.dsn, p.schema), 10)


class LocalSide(Side):
    """The raw ceiling: both legs in one local transaction of one database."""

    name = "local"
    label = "local: ONE transaction in ONE database (raw ceiling)"

    def __init__(self, run_id: str, parts: list[Participant], accounts_each: int) -> None:
        super().__init__(run_id, parts, accounts_each)
        self.conns: list[Conn] = []
        self.st = {p.name: Statements.of(p.schema) for p in parts}

    async def start(self, clients: int) -> None:
        await super().start(clients)
        self.conns = [await connect(self.parts[0].target, autocommit=True) for _ in range(clients)]

    async def transfer(self, client: int, t: Transfer) -> str | None:
        conn = self.conns[client]
        async with conn.transaction():
            for p, account, delta in legs(t):
                await work(conn, self.st[p], t.txn, account, delta)
        return None

    async def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await conn.close()


class ByHandSide(Side):
    """psycopg's two-phase API from this process: no coordinator process, no log."""

    name = "by-hand"
    label = "by hand: psycopg tpc_* on two servers (no process, no log)"
    coordinator = "hand"
    """In its gids, a coordinator's name's place: the same gids' shape as ours."""

    def __init__(self, run_id: str, parts: list[Participant], accounts_each: int) -> None:
        super().__init__(run_id, parts, accounts_each)
        self.conns: list[dict[str, Conn]] = []
        self.st = {p.name: Statements.of(p.schema) for p in parts}

    async def start(self, clients: int) -> None:
        await super().start(clients)
        self.conns = [
            {p.name: await connect(p.target, autocommit=False) for p in self.parts} for _ in range(clients)
        ]

    async def transfer(self, client: int, t: Transfer) -> str | None:
        conns = self.conns[client]
        txn_id = coordscope.two_pc_txn_id(self.run_id, self.coordinator, t.txn)
        prepared: list[Conn] = []
        try:
            for p, account, delta in legs(t):  # phase one, in the fixed order
                conn = conns[p]
                await conn.tpc_begin(coordscope.branch_gid(txn_id, p))
                await work(conn, self.st[p], t.txn, account, delta)
                await conn.tpc_prepare()
                prepared.append(conn)
        except (psycopg.Error, BenchError) as exc:
            for conn in conns.values():  # ROLLBACK, or ROLLBACK PREPARED for a branch that voted yes
                with contextlib.suppress(psycopg.Error):
                    await conn.tpc_rollback()
            return f"phase one: {type(exc).__name__}: {exc}"[:300]
        await self.decided(t)
        await asyncio.gather(*(conn.tpc_commit() for conn in prepared))  # phase two, both at once
        return None

    async def decided(self, t: Transfer) -> None:
        """The decision is made (no log: nothing to do)."""

    async def close(self) -> None:
        for conns in self.conns:
            for conn in conns.values():
                with contextlib.suppress(Exception):
                    await conn.close()


class LoggedByHandSide(ByHandSide):
    """The same, and the decision logged as a two-phase commit must (to finish after a
    crash): a znode per committed transaction in ZooKeeper, written (kazoo, as a client
    in a hurry writes it: the blocking call in a thread) before phase two."""

    name = "by-hand+log"
    label = "by hand + its COMMIT logged in ZooKeeper (no process)"

    def __init__(self, run_id: str, parts: list[Participant], lab: Lab) -> None:
        super().__init__(run_id, parts, lab.args.accounts)
        self.hosts = lab.zk_hosts
        self.log = coordscope.two_pc_log(run_id, self.coordinator)
        self.zk = KazooClient(hosts=lab.zk_hosts, timeout=10.0)

    async def start(self, clients: int) -> None:
        await super().start(clients)
        await asyncio.to_thread(self.zk.start, 15)
        await asyncio.to_thread(self.zk.ensure_path, self.log)

    async def decided(self, t: Transfer) -> None:
        await asyncio.to_thread(self.zk.create, f"{self.log}/{t.txn}", b'{"state":"COMMITTING"}')

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(_stop, self.zk)
        await remove_tree(self.hosts, coordscope.two_pc_log(self.run_id))


class ServiceSide(Side):
    """A side made of service processes (a coordinator, participants), under a run hash
    of its own whose heartbeat keeps them up; a transfer is ``POST /transfer`` on an entry
    service (the clients take them in turn), answered with ``{outcome}``."""

    committed = "committed"
    """The outcome a transfer that went through answers."""

    def __init__(self, run_id: str, parts: list[Participant], lab: Lab) -> None:
        super().__init__(run_id, parts, lab.args.accounts)
        self.lab = lab
        self.services = ServiceSet(run_id, lab.control_url, time.monotonic(), control=lab.control)
        self.entries: list[Service] = []
        self.record = RunRecord(lab.control, run_id)
        self.heartbeat: asyncio.Task[None] | None = None
        self.http: Http | None = None

    def pids(self) -> list[int]:
        return [s.pid for s in self.services.services.values() if s.pid and s.running]

    async def start(self, clients: int) -> None:
        await super().start(clients)
        # the services stop by themselves unless their run is "running" with a fresh heartbeat
        await self.record.create(self.scenario, {"bench": "transactions"}, [], "bench/transactions.py")
        self.heartbeat = asyncio.create_task(self.record.heartbeat(lambda: {}, asyncio.Event()))
        self.entries = await self.start_services()

    scenario = ""

    async def start_services(self) -> list[Service]:
        raise NotImplementedError

    async def begin_round(self) -> None:
        # a fresh client per round (bench/idempotency.py says why: idle keep-alive connections)
        self.http = Http()

    async def end_round(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    async def transfer(self, client: int, t: Transfer) -> str | None:
        assert self.http is not None
        service = self.entries[client % len(self.entries)]
        reply = await self.http.post(service, "/transfer", t.body(), REQUEST_TIMEOUT_S)
        if not reply.ok:
            return f"{service.name} answered {reply.status} {reply.error} {reply.body}"[:300]
        if reply.body.get("outcome") != self.committed:
            return f"{service.name}: {reply.body.get('outcome')} ({reply.body.get('reason')})"[:300]
        return None

    async def close(self) -> None:
        await self.end_round()
        with contextlib.suppress(Exception):  # SIGTERM by PID (process group), SIGKILL what overstays
            await self.services.stop_all(timeout=10)
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            await asyncio.gather(self.heartbeat, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.record.finish("done", None), 5)
        with contextlib.suppress(Exception):
            await self.lab.control.delete(
                coordscope.history_key(self.run_id), coordscope.run_key(self.run_id)
            )


class CoordinatorSide(ServiceSide):
    """coordscope's 2PC: ``--coordinators`` coordinator processes, their log in ZooKeeper."""

    name = "2pc"
    label = "coordscope 2PC: coordinator process, ZooKeeper log"
    scenario = "txn-2pc"

    async def start_services(self) -> list[Service]:
        module, args = two_phase.coordinator_command(self.parts, self.lab.zk_hosts, "on", LOCK_TIMEOUT_MS)
        return list(
            await asyncio.gather(
                *(
                    self.services.start(f"coord-{i + 1}", "2pc-coordinator", module, args)
                    for i in range(self.lab.args.coordinators)
                )
            )
        )

    async def close(self) -> None:
        await super().close()
        await remove_tree(self.lab.zk_hosts, coordscope.two_pc_log(self.run_id))


class TccSide(ServiceSide):
    """``txn-tcc``: a TCC coordinator and a participant process per database (fence on),
    started with the arguments the scenario gives them; its tables are ``accounts.TCC_DDL``."""

    name = "tcc"
    label = "TCC: coordinator + 2 participant processes (fence on)"
    scenario = "txn-tcc"
    committed = "confirmed"

    async def create_tables(self) -> None:
        ids = accounts.account_ids(self.accounts)
        for p in self.parts:
            await create_schema(p.target, p.schema, accounts.TCC_DDL)
            async with await connect(p.target, autocommit=True) as conn:
                await conn.execute(accounts.seed_sql(p.schema, ids, BALANCE, tcc=True))

    async def start_services(self) -> list[Service]:
        started = await asyncio.gather(
            *(
                self.services.start(f"tcc-{i + 1}", "tcc-participant", *tcc.participant_command(p, "on"))
                for i, p in enumerate(self.parts)
            )
        )
        participants = {p.name: s for p, s in zip(self.parts, started, strict=True)}
        command = tcc.coordinator_command(participants, self.lab.control_url, TRY_TIMEOUT_MS, "on")
        return [await self.services.start("tcc-coordinator", "tcc-coordinator", *command)]

    async def check(self, prefix: str, sent: list[Transfer]) -> None:
        """Every branch of the round CONFIRMED in its participant's fence log, nothing left
        frozen, the money conserved."""
        xids = {f"{self.run_id}:{t.txn}" for t in sent}
        total = 0
        problems: list[str] = []
        for p in self.parts:
            async with await connect(p.target, autocommit=True) as conn:
                schema = sql.Identifier(p.schema)
                cur = await conn.execute(
                    sql.SQL("SELECT xid, status FROM {}.tcc_fence_log WHERE starts_with(xid, %s)").format(
                        schema
                    ),
                    (f"{self.run_id}:{prefix}",),
                )
                fence = {str(x): str(s) for x, s in await cur.fetchall()}
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT coalesce(sum(available), 0), count(*) FILTER (WHERE frozen <> 0) "
                        "FROM {}.accounts"
                    ).format(schema)
                )
                row = await cur.fetchone()
                assert row is not None
            total += int(row[0])
            confirmed = {x for x, s in fence.items() if s == "CONFIRMED"}
            if confirmed != xids or len(fence) != len(xids):
                problems.append(
                    f"{p.name}: {len(xids)} transfers sent, {len(confirmed)} CONFIRMED in the fence log "
                    f"(other states: {sorted(set(fence.values()) - {'CONFIRMED'})})"
                )
            if int(row[1]):
                problems.append(f"{p.name}: {row[1]} account(s) with money left frozen")
        self._conserved(total, problems, prefix)

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            await delete_matching(self.lab.control, coordscope.txn_key(f"{self.run_id}:*"))


async def delete_matching(client: Redis, pattern: str) -> int:
    """UNLINK every key matching ``pattern`` (SCAN, bounded)."""
    deleted, cursor = 0, 0
    for _ in range(10_000):
        cursor, keys = await client.scan(cursor, match=pattern, count=1000)
        if keys:
            deleted += int(await client.unlink(*keys))
        if cursor == 0:
            break
    return deleted


# ---------------------------------------------------------------------- the load


async def drive(
    side: Side, prefix: str, limit: int, seconds: float, clients: int, seed: int
) -> tuple[list[Transfer], list[float], float, list[str]]:
    """``clients`` tasks taking transfers 0, 1, 2, ... in turn: at most ``limit``, and none
    started after ``seconds``. Returns (the transfers sent, their latencies in ms, the
    seconds it took, what went wrong)."""
    ids = accounts.account_ids(side.accounts)
    first, second = side.parts
    rng = random.Random(seed)
    sent: list[Transfer] = []
    latencies: list[float] = []
    failures: list[str] = []
    taken = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds

    async def client(c: int) -> None:
        while time.perf_counter() < deadline:
            i = next(taken)
            if i >= limit:
                return
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            t = Transfer(f"{prefix}{i}", (a.name, rng.choice(ids)), (b.name, rng.choice(ids)), AMOUNT)
            t0 = time.perf_counter()
            wrong = await side.transfer(c, t)
            latencies.append((time.perf_counter() - t0) * 1000)
            sent.append(t)
            if wrong is not None:
                failures.append(f"{t.txn}: {wrong}")

    await asyncio.gather(*(client(c) for c in range(clients)))
    side.sent += len(sent)
    return sent, latencies, time.perf_counter() - started, failures


# ---------------------------------------------------------------------- where 2PC's time goes


@dataclass
class Probe:
    """What the coordinator adds to a transfer, each probed alone, serial (p50 ms each)."""

    hop_ms: float
    hop_cpu_ms: float
    """This client and the coordinator, per request."""
    log_writes: float
    """ZooKeeper writes per transaction: its znode's version + 1 (create, then each set)."""
    log_ms: float
    """That many writes, one after the other, as the coordinator makes them."""
    log_cpu_ms: float
    """ZooKeeper's and this client's CPU for them."""
    xadds: float
    """Narration: history entries per transfer."""
    xadd_ms: float


async def timed(step: Callable[[int], Any], pids: list[int]) -> tuple[float, float]:
    """(p50 ms, CPU ms of ``pids`` per call) of ``step(i)``, serial: at most
    :data:`PROBE_COUNT` calls and :data:`PROBE_SECONDS`."""
    latencies: list[float] = []
    cpu0 = cpu_seconds(pids)
    deadline = time.perf_counter() + PROBE_SECONDS
    for i in range(PROBE_COUNT):
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        await step(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    return percentile(latencies, 50), 1000 * (cpu_seconds(pids) - cpu0) / max(1, len(latencies))


async def probe(lab: Lab, side: CoordinatorSide) -> Probe:
    me = [os.getpid()]
    http = Http()
    try:
        coordinator = side.entries[0]
        hop_ms, hop_cpu = await timed(
            lambda _: http.get(coordinator, "/healthz", REQUEST_TIMEOUT_S), [*me, *side.pids()]
        )
    finally:
        await http.aclose()
    # the log: how many writes each transaction made, and as many made alone
    zk = KazooClient(hosts=lab.zk_hosts, timeout=10.0)
    await asyncio.to_thread(zk.start, 15)
    try:
        log = coordscope.two_pc_log(side.run_id, side.entries[0].name)
        txns = sorted(await asyncio.to_thread(zk.get_children, log))[:50]
        entries = [await asyncio.to_thread(zk.get, f"{log}/{t}") for t in txns]
        writes = statistics.mean(stat.version + 1 for _, stat in entries) if entries else 0.0
        payload = max((data for data, _ in entries), key=len, default=b"{}")
        base = f"{coordscope.two_pc_log(side.run_id)}/bench-probe"  # removed with the log
        await asyncio.to_thread(zk.ensure_path, base)

        async def write_log(i: int) -> None:  # the one write a transfer waits for
            await asyncio.to_thread(zk.create, f"{base}/t{i}", payload)

        log_ms, log_cpu = await timed(write_log, [*me, *lab.zk_pids()])
    finally:
        await asyncio.to_thread(_stop, zk)
    # the narration: as many XADDs as the history holds per transfer, its own ops again
    history = coordscope.history_key(side.run_id)
    xadds = await lab.control.xlen(history) / max(1, side.sent)
    stream: Any = await lab.control.xrange(history, count=20)
    ops: list[Any] = [fields for _, fields in stream or []] or [{"op": "{}"}]
    key = f"{history}:bench-probe"
    try:
        xadd_ms, _ = await timed(lambda i: lab.control.xadd(key, ops[i % len(ops)]), me)
    finally:
        await lab.control.delete(key)
    return Probe(hop_ms, hop_cpu, writes, log_ms, log_cpu, xadds, xadd_ms)


def _stop(zk: KazooClient) -> None:
    with contextlib.suppress(Exception):
        zk.stop()
        zk.close()


# ---------------------------------------------------------------------- the lab


def _pids(member: Member) -> Callable[[], list[int]]:
    return lambda: processes_of(member)


class Lab:
    """The sides, started on the cluster, and stopped (by PID) in :meth:`close`."""

    def __init__(self, info: ClusterInfo, args: argparse.Namespace) -> None:
        self.args = args
        pg = info.pg_targets()
        if len(pg) < 2:
            raise BenchError(f"the local cluster has {len(pg)} PostgreSQL server(s): two are needed")
        self.pg = (pg[0], pg[1])
        targets = {t.id: t for t in info.redis_targets()}
        self.control_node = info.masters[-1]
        control_target = targets[self.control_node.name]
        self.control_url = control_target.url
        self.control = redis_client(control_target)
        self.zk_hosts = info.zk_targets()[0].hosts
        self.zk_members = [m for m in info.members if m.kind == "zookeeper"]
        self.tag = f"{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
        local, hand, two_pc = self.run_id("local"), self.run_id("hand"), self.run_id("2pc")
        logged, tcc = self.run_id("hand-log"), self.run_id("tcc")
        self.sides: list[Side] = [
            LocalSide(local, accounts.participants(local, (pg[0],)), args.accounts),
            ByHandSide(hand, accounts.participants(hand, self.pg), args.accounts),
            LoggedByHandSide(logged, accounts.participants(logged, self.pg), self),
            CoordinatorSide(two_pc, accounts.participants(two_pc, self.pg), self),
            TccSide(tcc, accounts.participants(tcc, self.pg), self),
        ]
        members = {m.name: m for m in info.members}
        self.groups: dict[str, Callable[[], list[int]]] = {
            CLIENT: lambda: [os.getpid()],
            SERVICES: lambda: [pid for s in self.sides for pid in s.pids()],
            **{f"{t.id} (every process)": _pids(members[t.id]) for t in self.pg},
            "zookeeper (the 2PC log)": self.zk_pids,
            f"{self.control_node.name} (narration, heartbeats)": lambda: [self.control_node.pid],
        }
        self.started: list[Side] = []

    def run_id(self, side: str) -> str:
        return f"bench-txn-{side}-{self.tag}"

    def zk_pids(self) -> list[int]:
        return [m.pid for m in self.zk_members]

    async def start(self) -> None:
        for side in self.sides:
            self.started.append(side)
            await side.start(max(self.args.clients, 1))

    async def close(self) -> None:
        for side in self.started:
            with contextlib.suppress(Exception):
                await side.close()
        for side in self.started:
            await side.drop()
        await self.control.aclose()

    async def round(self, side: Side, clients: int, label: str, limit: int, seconds: float) -> Round:
        """One round of a side at ``clients``, checked."""
        prefix = f"{label}-"
        await side.begin_round()
        try:
            meter = Meter(self.groups)
            meter.start()
            sent, latencies, took, failures = await drive(
                side, prefix, limit, seconds, clients, seed=zlib.crc32(label.encode())
            )
            cpu = meter.stop()
        finally:
            await side.end_round()
        if failures:
            raise BenchError(f"{side.label}: {len(failures)} of {len(sent)} transfers failed: {failures[:3]}")
        if not sent:
            raise BenchError(f"{side.label}: no transfer was sent within {seconds} s")
        await side.check(prefix, sent)
        return Round(count=len(sent), seconds=took, cpu=cpu, latencies_ms=latencies)


@dataclass
class Result:
    sides: list[Side]
    concurrencies: list[int]
    ratios: dict[int, dict[tuple[str, str], list[float]]]
    """Concurrency -> (side, to which side) -> the per-round ratios of their rates."""
    probe: Probe


def pairs(sides: list[Side]) -> list[tuple[str, str]]:
    names = [s.name for s in sides]
    out = [(n, "local") for n in names if n != "local"]
    out += [(n, "by-hand") for n in names if n not in ("local", "by-hand")]
    return out + [(n, GOAL_SIDE) for n in names if n not in ("local", "by-hand", GOAL_SIDE)]


async def bench(info: ClusterInfo, args: argparse.Namespace) -> Result:
    lab = Lab(info, args)
    try:
        await lab.start()
        concurrencies = list(dict.fromkeys([args.clients, 1]))
        ratios: dict[int, dict[tuple[str, str], list[float]]] = {}
        for clients in concurrencies:
            for side in lab.sides:  # warm up (not counted): connections, plans, the services' pools
                await lab.round(side, clients, f"c{clients}-{side.name}-w", args.transfers, args.warmup)
                side.figures[clients] = Figures()
            ratios[clients] = {pair: [] for pair in pairs(lab.sides)}
            for n in range(1, args.rounds + 1):
                k = (n - 1) % len(lab.sides)
                rates: dict[str, float] = {}
                for side in lab.sides[k:] + lab.sides[:k]:  # the first side rotates
                    label = f"c{clients}-{side.name}-r{n}"
                    r = await lab.round(side, clients, label, args.transfers, args.seconds)
                    side.figures[clients].rounds.append(r)
                    rates[side.name] = r.rate
                for (a, b), values in ratios[clients].items():
                    values.append(rates[a] / rates[b])
        two_pc = next(s for s in lab.sides if isinstance(s, CoordinatorSide))
        return Result(lab.sides, concurrencies, ratios, await probe(lab, two_pc))
    finally:
        await lab.close()


# ---------------------------------------------------------------------- the report


def line(label: str, value: str) -> None:
    print(f"  {label:<64}{value}")


def ratio_line(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f}x  (rounds {min(values):.2f}-{max(values):.2f})"


def report(r: Result, args: argparse.Namespace) -> None:
    names = [s.name for s in r.sides]
    print(
        f"transfers/s: {AMOUNT} from a random account to a random account of the other participant "
        f"({args.accounts} each); median of {args.rounds} rounds of <= {args.transfers} transfers / "
        f"<= {args.seconds:g} s, the sides alternating ({', '.join(names)}; the first rotates); "
        "latency at the client:"
    )
    for clients in r.concurrencies:
        print(f"{clients} concurrent client{'s' if clients > 1 else ' (serial)'}:")
        for side in r.sides:
            line(side.label, rate_line(side.figures[clients]))
        for (a, b), values in r.ratios[clients].items():
            if (a, b) == ("2pc", GOAL_SIDE):
                verdict = "PASS" if statistics.median(values) >= GOAL else "BELOW THE GOAL"
                line(f"ratio {a} / {b} (goal >= {GOAL})", f"{ratio_line(values)}  {verdict}")
            else:
                line(f"ratio {a} / {b}", ratio_line(values))
        for side in r.sides:
            line(f"  per round: {side.name}", " ".join(f"{x:,.0f}" for x in side.figures[clients].rates))
        print(f"  CPU per transfer, ms (everything shares this machine's {os.cpu_count()} cores):")
        cpu = {s.name: s.figures[clients].cpu_ms_per_op() for s in r.sides}
        width = max(10, *(len(n) + 2 for n in cpu))
        line("", "".join(f"{n:>{width}}" for n in cpu))
        for group in next(iter(cpu.values())):  # a process that exited mid-round can read < 0: shown as 0
            line(f"  {group}", "".join(f"{max(0.0, c.get(group, 0.0)):>{width}.3f}" for c in cpu.values()))
        line("  the whole machine", "".join(f"{sum(c.values()):>{width}.3f}" for c in cpu.values()))
        servers = [sum(v for g, v in c.items() if g not in (CLIENT, ELSEWHERE)) for c in cpu.values()]
        line(
            "  the servers alone (no client, no rest of the machine)",
            "".join(f"{x:>{width}.3f}" for x in servers),
        )
        busy = [
            sum(sum(x.cpu.values()) for x in s.figures[clients].rounds)
            / sum(x.seconds for x in s.figures[clients].rounds)
            for s in r.sides
        ]
        line("  cores busy on average", "".join(f"{b:>{width}.2f}" for b in busy))
    p = r.probe
    hand = next(s for s in r.sides if s.name == "by-hand").figures[1]
    ours = next(s for s in r.sides if s.name == "2pc").figures[1]
    hand_ms, ours_ms = percentile(hand.latencies, 50), percentile(ours.latencies, 50)
    print(
        "where a serial 2pc transfer's time goes: p50 of the by-hand side (1 client), then of each "
        "thing the coordinator adds, probed alone, serial:"
    )
    line("the two phases' SQL, by hand", f"{hand_ms:6.2f} ms")
    line(
        "+ the HTTP hop (GET /healthz on the coordinator)",
        f"{p.hop_ms:6.2f} ms   (CPU, client + coordinator: {p.hop_cpu_ms:.2f} ms)",
    )
    line(
        f"+ the ZooKeeper log: {p.log_writes:.1f} writes per transaction, 1 waited for",
        f"{p.log_ms:6.2f} ms   (CPU, ZooKeeper + kazoo, all {p.log_writes:.0f}: {p.log_cpu_ms:.2f} ms)",
    )
    line(
        f"  (the narration: {p.xadds:.1f} ops per transfer, one pipeline, not waited for",
        f"{p.xadds * p.xadd_ms:6.2f} ms if each were an XADD of its own)",
    )
    parts = hand_ms + p.hop_ms + p.log_ms
    line("= the sum", f"{parts:6.2f} ms")
    line(
        "the 2pc side's own p50, 1 client",
        f"{ours_ms:6.2f} ms   (beyond the sum: {ours_ms - parts:+.2f} ms, the coordinator's own work)",
    )
    print(f"  ({ELSEWHERE}: other programs and interrupts, our loopback traffic's among them)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 30 s)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per concurrency (6; quick: 3)")
    parser.add_argument("--seconds", type=float, help="at most this long per round (2.5; quick: 0.8)")
    parser.add_argument("--transfers", type=int, default=20_000, help="at most this many per round (20000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4); 1 is measured too")
    parser.add_argument(
        "--accounts", type=int, default=ACCOUNTS, help=f"accounts per participant ({ACCOUNTS})"
    )
    parser.add_argument("--coordinators", type=int, default=1, help="2PC coordinator processes (1)")
    args = parser.parse_args()
    rounds, seconds, warmup = (3, 0.8, 0.4) if args.quick else (6, 2.5, 1.0)
    args.rounds = args.rounds or rounds
    args.seconds = args.seconds or seconds
    args.warmup = min(warmup, args.seconds)
    return on_own_cluster(bench, report, args, (BenchError, ScenarioError))


if __name__ == "__main__":
    sys.exit(main())
