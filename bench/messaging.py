"""Messaging benchmark: commit → effect latency and messages/s of ``txn-outbox``'s pipeline,
with ``relay=poll`` and ``relay=notify``, against a bare Redis Streams pipeline in the same run.

Starts its own local cluster (the same code as ``coordscope up``) in a temporary folder:
A's schema on ``postgres-1``, B's on ``postgres-2``, the stream on a Redis master other
than the control node (as ``txn-outbox`` places it), the run hashes (a live heartbeat
keeps the services up) on the last master. Every side has schemas, a stream and a
consumer group ``b`` of its own. The sides, each message one order:

- ``bare``, the raw ceiling: a client ``XADD``s the message (the relay's fields and
  payload) to the stream; consumers of the group, in this process, ``XREADGROUP`` and
  ``XACK`` each batch, as B does. Latency: from just before the ``XADD`` to the moment
  the consumer's ``XREADGROUP`` returned it (this process's clock);
- ``by-hand``, the outbox's work done by hand, in this process: A's statement (order and
  outbox row, one transaction: ``outbox_producer.PLACE``) on ``postgres-1``, then the
  ``XADD`` at once — no relay, no polling, no service process, the outbox row left
  unsent; the consumers apply each message with B's statement (inbox row and effect,
  one transaction: ``outbox_consumer.APPLY_WITH_INBOX``) on ``postgres-2``, then ``XACK``;
- ``outbox-poll`` / ``outbox-notify``: the scenario's processes, started through
  ``ServiceSet`` with the arguments ``txn-outbox`` gives them, narration off: A
  (``POST /order``), the relay (``--mode poll``, every ``poll_ms``, or ``notify``, woken
  by A's ``NOTIFY``, with its slow safety poll) and ``consumers`` B processes (inbox on).

Latency, for the last three: from A's commit (the time its statement returned: A's
``committed_ms``, or this process's for by-hand) to B's effect (``effects.applied_at``,
PostgreSQL's ``clock_timestamp()`` in B's transaction; both clocks are this machine's);
for bare, from just before the ``XADD`` to the return of the ``XREADGROUP`` that read it.
It is split at the message's first ``XADD``, read from its stream entry's id (Redis's
clock, millisecond resolution): commit -> XADD is the relay's part (its wait for the next
poll, or for the NOTIFY, and its round), XADD -> effect the stream's and B's. A round's
rate is its messages over the time from its first send to its last effect (or read):
the pipeline end to end, its drain included.

Load: ``--clients`` (4) concurrent clients, then 1, in this process (asyncio), each
sending its next message when the last was answered: at most ``--messages`` a round and
none sent after ``--seconds``. Per concurrency, a warm-up round of each side (not
counted), then ``--rounds`` rounds in which the sides alternate (the first one rotates).
After each round's load it waits, bounded, until the group has read and acknowledged
every entry (a consumer acknowledges once the effect is committed) and, for the relay
sides, nothing is left unsent in A's outbox. Then it checks the round: every message
answered committed (or ``XADD``ed) is in the stream and was applied (read) exactly once,
and nothing else was; A's orders are exactly those committed. Otherwise it fails loudly
(exit 1). Reported per concurrency: each side's median messages/s, the median of the
per-round ratios of its rate to bare's, latency p50 / p99 over every round and the p50
of its two parts, the send's own p50 at the client, and CPU per message by process.

At the end it stops the services (by PID), drops the schemas, deletes the streams and
the runs' keys, and stops the cluster. Every loop is bounded in count and time.

    .venv/bin/python -m bench.messaging [--quick] [--rounds 8] [--seconds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from redis.asyncio import Redis

from app.cluster import ClusterInfo
from app.cluster_member import Member, processes_of
from bench.lab import on_own_cluster
from collectors.layouts import coordscope
from collectors.layouts.messaging import outbox_stream_key
from scenarios.kit.catalogue import ScenarioError
from scenarios.kit.clients import behind, redis_client
from scenarios.kit.database import create_schema, drop_schema, two_databases
from scenarios.kit.history import RunRecord
from scenarios.kit.http import Http
from scenarios.kit.rounds import ELSEWHERE, Meter, Round, Rounds, percentile
from scenarios.kit.services import ServiceSet
from scenarios.messaging import outbox_stores as stores
from scenarios.messaging.outbox import SPEC, command_lines
from scenarios.messaging.outbox_consumer import APPLY_WITH_INBOX, BATCH, BLOCK_MS, GROUP
from scenarios.messaging.outbox_producer import AGGREGATE, EVENT_TYPE, PLACE

DEFAULTS = {p.name: p.default for p in SPEC.params}
POLL_MS = int(DEFAULTS["poll_ms"])
CONSUMERS = int(DEFAULTS["consumers"])
CLAIM_IDLE_MS = int(DEFAULTS["claim_idle_ms"])
AMOUNT = 10
REQUEST_TIMEOUT_S = 10.0
DRAIN_S = 30.0
"""A round's messages must all be applied and acknowledged this long after its load."""
SETTLE_EVERY_S = 0.01
STREAM_PAGE = 1000
STREAM_PAGES = 100
CLIENT = "this process (clients; bare, by-hand: consumers)"
SERVICES = "service processes (A, relay, B-1, B-2)"
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
OnEntry = Callable[[dict[bytes, bytes]], Awaitable[None]]


class BenchError(Exception):
    """What was measured is wrong (a message lost, applied twice, left pending or unsent)."""


@dataclass
class Figures(Rounds):
    """One side's rounds at one concurrency."""

    rounds: list[Round] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    """Each send's latency at the client (POST /order, A's statement + XADD, or XADD)."""
    to_xadd: list[float] = field(default_factory=list)
    """Commit -> the message's first XADD (its entry id's millisecond)."""
    from_xadd: list[float] = field(default_factory=list)
    """That XADD -> the effect."""

    def add(self, sample: Sample) -> None:
        self.rounds.append(sample.round)
        self.send_ms += sample.send_ms
        self.to_xadd += sample.to_xadd
        self.from_xadd += sample.from_xadd


@dataclass
class Sample:
    """What one checked round measured."""

    round: Round
    send_ms: list[float]
    to_xadd: list[float]
    from_xadd: list[float]


@dataclass
class Load:
    """What a round's clients did: when it started (wall ms), each message answered
    committed (or sent) with its time (wall ms), the sends' latencies, what failed."""

    started_ms: float
    committed: dict[str, float] = field(default_factory=dict)
    send_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def wall_ms() -> float:
    return time.time() * 1000


async def connect(dsn: str) -> Conn:
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=5, application_name="bench-messaging"
    )


def fields_of(msg: str) -> dict[Any, Any]:
    """A stream entry as the relay writes it."""
    payload = json.dumps({"order": msg, "amount": AMOUNT})
    return {"id": msg, "type": EVENT_TYPE, "aggregateid": msg, "payload": payload}


async def read_group(redis: Redis, stream: str, consumer: str, on_entry: OnEntry) -> None:
    """A consumer of the group in this process, as B reads: ``XREADGROUP`` a batch, handle
    each entry, one ``XACK`` for the batch. Runs until cancelled; an error ends it (and
    the round that waits for it fails). Closes its client."""
    try:
        while True:
            reply: Any = await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=BATCH, block=BLOCK_MS)
            for _, entries in reply or ():
                for _, fields in entries:
                    await on_entry(fields)
                await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
    finally:
        await redis.aclose()


# ---------------------------------------------------------------------- the sides


class Side:
    """A pipeline from a client's send to a consumer's effect, on its own stream and schemas."""

    name = ""
    label = ""
    databases = True
    """Has A's and B's schemas (all but bare)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.run_id = f"bench-msg-{self.name}-{lab.tag}"
        self.stream = outbox_stream_key(self.run_id)
        self.a, self.b = two_databases(self.run_id, lab.pg)
        self.figures: dict[int, Figures] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.a_conn: Conn | None = None
        self.b_conn: Conn | None = None

    def pids(self) -> list[int]:
        return []

    async def start(self, clients: int) -> None:
        await self.lab.broker.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        if self.databases:
            for db, ddl in ((self.a, stores.A_DDL), (self.b, stores.B_DDL)):
                await create_schema(db.target, db.schema, ddl)
            self.a_conn, self.b_conn = await connect(self.a.target.dsn), await connect(self.b.target.dsn)

    def read(self, on_entry: OnEntry) -> None:
        """Start the group's consumers in this process (a client of their own each)."""
        for i in range(CONSUMERS):
            redis = redis_client(self.lab.broker_target)
            self.readers.append(asyncio.create_task(read_group(redis, self.stream, f"B-{i + 1}.0", on_entry)))

    async def begin_round(self) -> None:
        """Before a round's load (not timed)."""

    async def end_round(self) -> None:
        """After the round (not timed)."""

    async def send(self, client: int, msg: str) -> float:
        """Send one message; the wall ms it counts from (raises what went wrong)."""
        raise NotImplementedError

    async def left(self, prefix: str, n: int) -> str:
        """What of the round is still on its way ("" when nothing): entries the group has
        not read, or read and not acknowledged — a consumer acknowledges an entry once its
        effect is committed, so a group with neither has applied everything published.
        Asked of Redis, not of B's table (its count would scan a table that grows every round,
        every few ms, beside the consumers still applying)."""
        for task in self.readers:
            if task.done():
                raise BenchError(f"{self.name}: a consumer in this process stopped: {task.exception()!r}")
        return await behind(self.lab.broker, self.stream, GROUP)

    async def delivered(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Message -> (effects, the first one's wall ms), for the round's messages."""
        assert self.b_conn is not None
        cur = await self.b_conn.execute(
            sql.SQL(
                "SELECT message_id, count(*), extract(epoch FROM min(applied_at)) * 1000 FROM {}.effects "
                "WHERE starts_with(message_id, %s) GROUP BY message_id"
            ).format(sql.Identifier(self.b.schema)),
            (prefix,),
        )
        return {str(m): (int(n), float(t)) for m, n, t in await cur.fetchall()}

    async def published(self, prefix: str, since_ms: float) -> dict[str, float]:
        """Message -> its first XADD's time (wall ms, from the entry id: Redis's clock, the
        middle of its millisecond), for the round's entries (XRANGE from ``since_ms``)."""
        out: dict[str, float] = {}
        start = f"{int(since_ms) - 1000}-0"
        for _ in range(STREAM_PAGES):
            page: Any = await self.lab.broker.xrange(self.stream, min=start, count=STREAM_PAGE)
            for entry_id, fields in page:
                msg = fields.get(b"id", b"").decode()
                if msg.startswith(prefix) and msg not in out:
                    out[msg] = int(entry_id.split(b"-")[0]) + 0.5
            if len(page) < STREAM_PAGE:
                break
            start = "(" + page[-1][0].decode()
        return out

    async def check(self, prefix: str, load: Load, got: dict[str, tuple[int, float]]) -> None:
        """Every message committed applied exactly once, nothing else; A's orders are those
        committed."""
        want = set(load.committed)
        problems = []
        if set(got) != want:
            problems.append(
                f"{len(want)} committed, {len(got)} applied (missing {sorted(want - set(got))[:3]}, "
                f"extra {sorted(set(got) - want)[:3]})"
            )
        twice = sorted(m for m, (n, _) in got.items() if n != 1)
        if twice:
            problems.append(f"{len(twice)} applied more than once, e.g. {twice[:3]}")
        if self.a_conn is not None:
            cur = await self.a_conn.execute(
                sql.SQL("SELECT id FROM {}.orders WHERE starts_with(id, %s)").format(
                    sql.Identifier(self.a.schema)
                ),
                (prefix,),
            )
            orders = {str(r[0]) for r in await cur.fetchall()}
            if orders != want:
                problems.append(f"A holds {len(orders)} orders, {len(want)} answered committed")
        if problems:
            raise BenchError(f"{self.name}, after {prefix}*: " + "; ".join(problems))

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for conn in (self.a_conn, self.b_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def drop(self) -> None:
        for db in (self.a, self.b) if self.databases else ():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drop_schema(db.target.dsn, db.schema), 10)
        with contextlib.suppress(Exception):
            await self.lab.broker.delete(self.stream)


class BareSide(Side):
    """The raw ceiling: ``XADD``, ``XREADGROUP`` + ``XACK``; no database."""

    name = "bare"
    label = "the raw ceiling: XADD; XREADGROUP + XACK by consumers in this process"
    databases = False

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.received: dict[str, list[float]] = {}

    async def start(self, clients: int) -> None:
        await super().start(clients)
        self.read(self.receive)

    async def receive(self, fields: dict[bytes, bytes]) -> None:
        self.received.setdefault(fields[b"id"].decode(), []).append(wall_ms())

    async def send(self, client: int, msg: str) -> float:
        t = wall_ms()
        await self.lab.broker.xadd(self.stream, fields_of(msg))
        return t

    async def left(self, prefix: str, n: int) -> str:
        got = sum(1 for m in self.received if m.startswith(prefix))
        return f"{n - got} not received" if got < n else await super().left(prefix, n)

    async def delivered(self, prefix: str) -> dict[str, tuple[int, float]]:
        return {m: (len(ts), ts[0]) for m, ts in self.received.items() if m.startswith(prefix)}


class ByHandSide(Side):
    """A's and B's statements from this process: commit, ``XADD`` at once, apply."""

    name = "by-hand"
    label = "A's statement, then XADD at once; B's statement by consumers in this process (no relay)"

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.conns: list[Conn] = []
        schema = sql.Identifier(self.a.schema)
        self.place = sql.SQL(PLACE.replace("{notify}", "")).format(schema=schema)
        self.apply = sql.SQL(APPLY_WITH_INBOX).format(schema=sql.Identifier(self.b.schema))
        self.appliers: list[Conn] = []
        self.free: asyncio.Queue[Conn] = asyncio.Queue()
        """B's connections not in use: one per consumer task."""

    async def start(self, clients: int) -> None:
        await super().start(clients)
        self.conns = [await connect(self.a.target.dsn) for _ in range(clients)]
        self.appliers = [await connect(self.b.target.dsn) for _ in range(CONSUMERS)]
        for conn in self.appliers:
            self.free.put_nowait(conn)
        self.read(self.apply_one)

    async def apply_one(self, fields: dict[bytes, bytes]) -> None:
        msg = fields[b"id"].decode()
        payload = json.loads(fields[b"payload"])
        conn = await self.free.get()  # one per consumer: each holds one while it applies
        try:
            params = {"msg": msg, "order": payload["order"], "amount": payload["amount"], "consumer": "B"}
            await conn.execute(self.apply, params)
        finally:
            self.free.put_nowait(conn)

    async def send(self, client: int, msg: str) -> float:
        f = fields_of(msg)
        params = {"id": msg, "amount": AMOUNT, "aggregate": AGGREGATE, "type": EVENT_TYPE}
        await self.conns[client].execute(self.place, {**params, "payload": f["payload"], "channel": ""})
        committed = wall_ms()
        await self.lab.broker.xadd(self.stream, f)
        return committed

    async def close(self) -> None:
        await super().close()
        for conn in [*self.conns, *self.appliers]:
            with contextlib.suppress(Exception):
                await conn.close()


class OutboxSide(Side):
    """``txn-outbox``'s processes: A, the relay (``mode``), the B consumers; a run hash of
    its own whose heartbeat keeps them up."""

    def __init__(self, lab: Lab, mode: str) -> None:
        self.mode = mode
        self.name = f"outbox-{mode}"
        wait = f"polls every {POLL_MS} ms" if mode == "poll" else "woken by A's NOTIFY, safety poll 1 s"
        self.label = f"txn-outbox's processes: A (POST /order), the relay ({wait}), {CONSUMERS} B consumers"
        super().__init__(lab)
        self.services = ServiceSet(self.run_id, lab.control_url, time.monotonic(), control=lab.control)
        self.record = RunRecord(lab.control, self.run_id)
        self.heartbeat: asyncio.Task[None] | None = None
        self.http: Http | None = None

    def pids(self) -> list[int]:
        return [s.pid for s in self.services.services.values() if s.pid and s.running]

    async def start(self, clients: int) -> None:
        await super().start(clients)
        params: dict[str, str | int] = {"bench": "messaging", "relay": self.mode}
        await self.record.create(SPEC.name, params, [], "bench/messaging.py")
        self.heartbeat = asyncio.create_task(self.record.heartbeat(lambda: {}, asyncio.Event()))
        args = command_lines(
            self.a, self.b, self.lab.broker_target.url, self.stream, self.mode, "on", POLL_MS, CLAIM_IDLE_MS,
            narrate=False,
        )  # fmt: skip
        await asyncio.gather(
            self.services.start("A", "producer", *args["producer"]),
            self.services.start("relay", "relay", *args["relay"]),
            *(self.services.start(f"B-{i + 1}", "consumer", *args["consumer"]) for i in range(CONSUMERS)),
        )

    async def begin_round(self) -> None:
        self.http = Http()  # a fresh client per round (idle keep-alive connections)

    async def end_round(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    async def send(self, client: int, msg: str) -> float:
        assert self.http is not None
        reply = await self.http.post(
            self.services.services["A"], "/order", {"id": msg, "amount": AMOUNT}, REQUEST_TIMEOUT_S
        )
        if not reply.ok or reply.body.get("outcome") != "committed":
            raise BenchError(f"A answered {reply.status} {reply.error} {reply.body}"[:300])
        return float(reply.body["committed_ms"])

    async def left(self, prefix: str, n: int) -> str:
        """Rows unsent in A's outbox first (the relay publishes before it marks)."""
        assert self.a_conn is not None
        unsent, oldest_ms = await stores.backlog(self.a_conn, self.a.schema)
        if unsent:
            return f"{unsent} outbox row(s) unsent, the oldest {oldest_ms} ms old"
        return await super().left(prefix, n)

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
        await super().close()


# ---------------------------------------------------------------------- the load


async def drive(side: Side, prefix: str, limit: int, seconds: float, clients: int) -> Load:
    """``clients`` tasks taking messages 0, 1, 2, ... in turn: at most ``limit``, and none
    sent after ``seconds``."""
    load = Load(started_ms=wall_ms())
    taken = itertools.count()
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        while time.perf_counter() < deadline:
            i = next(taken)
            if i >= limit:
                return
            msg = f"{prefix}{i}"
            t0 = time.perf_counter()
            try:
                load.committed[msg] = await side.send(c, msg)
            except Exception as exc:
                load.failures.append(f"{msg}: {type(exc).__name__}: {exc}"[:300])
            load.send_ms.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return load


async def settle(side: Side, prefix: str, n: int) -> dict[str, tuple[int, float]]:
    """Wait (at most :data:`DRAIN_S`) until the round is applied and acknowledged."""
    deadline = time.monotonic() + DRAIN_S
    while left := await side.left(prefix, n):
        if time.monotonic() > deadline:
            raise BenchError(f"{side.name}, {prefix}*: {DRAIN_S:.0f} s after its load, {left}")
        await asyncio.sleep(SETTLE_EVERY_S)
    return await side.delivered(prefix)


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
        control_node = info.masters[-1]
        self.control_url = targets[control_node.name].url
        self.control = redis_client(targets[control_node.name])
        # the stream on another master, one without a replica if any (txn-outbox's broker_node)
        others = [m for m in info.masters if m is not control_node]
        lone = [m for m in others if not any(r.master == m.name for r in info.members)]
        broker_node = (lone or others or [control_node])[0]
        self.broker_target = targets[broker_node.name]
        self.broker = redis_client(self.broker_target)
        self.tag = f"{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
        self.sides: list[Side] = [
            BareSide(self),
            ByHandSide(self),
            OutboxSide(self, "poll"),
            OutboxSide(self, "notify"),
        ]
        members = {m.name: m for m in info.members}
        self.groups: dict[str, Callable[[], list[int]]] = {
            CLIENT: lambda: [os.getpid()],
            SERVICES: lambda: [pid for s in self.sides for pid in s.pids()],
            **{t.id: _pids(members[t.id]) for t in self.pg},
            f"{broker_node.name} (the stream)": lambda: [broker_node.pid],
            f"{control_node.name} (heartbeats)": lambda: [control_node.pid],
        }
        self.started: list[Side] = []

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
        await self.broker.aclose()
        await self.control.aclose()

    async def round(self, side: Side, clients: int, label: str, seconds: float) -> Sample:
        """One round of a side at ``clients``, checked."""
        prefix = f"{label}-"
        await side.begin_round()
        try:
            meter = Meter(self.groups)
            meter.start()
            load = await drive(side, prefix, self.args.messages, seconds, clients)
            if load.failures:
                raise BenchError(f"{side.name}: {len(load.failures)} sends failed: {load.failures[:3]}")
            if not load.committed:
                raise BenchError(f"{side.name}: nothing was sent within {seconds} s")
            got = await settle(side, prefix, len(load.committed))
            cpu = meter.stop()
        finally:
            await side.end_round()
        await side.check(prefix, load, got)
        xadds = await side.published(prefix, load.started_ms)
        if set(xadds) != set(load.committed):
            raise BenchError(
                f"{side.name}, {prefix}*: {len(load.committed)} sent, {len(xadds)} in the stream"
            )
        latencies = [got[m][1] - t for m, t in load.committed.items()]
        took_s = (max(t for _, t in got.values()) - load.started_ms) / 1000
        return Sample(
            Round(len(load.committed), took_s, cpu, latencies),
            load.send_ms,
            [xadds[m] - t for m, t in load.committed.items()],
            [got[m][1] - xadds[m] for m in load.committed],
        )


@dataclass
class Result:
    sides: list[Side]
    concurrencies: list[int]
    ratios: dict[int, dict[str, list[float]]]
    """Concurrency -> side -> the per-round ratios of its rate to bare's."""


async def bench(info: ClusterInfo, args: argparse.Namespace) -> Result:
    lab = Lab(info, args)
    try:
        await lab.start()
        concurrencies = list(dict.fromkeys([args.clients, 1]))
        ratios: dict[int, dict[str, list[float]]] = {}
        for clients in concurrencies:
            for side in lab.sides:  # warm up (not counted): connections, plans, the services' pools
                await lab.round(side, clients, f"c{clients}-{side.name}-w", args.warmup)
                side.figures[clients] = Figures()
            ratios[clients] = {s.name: [] for s in lab.sides[1:]}
            for n in range(1, args.rounds + 1):
                k = (n - 1) % len(lab.sides)
                rates: dict[str, float] = {}
                for side in lab.sides[k:] + lab.sides[:k]:  # the first side rotates
                    sample = await lab.round(side, clients, f"c{clients}-{side.name}-r{n}", args.seconds)
                    side.figures[clients].add(sample)
                    rates[side.name] = sample.round.rate
                for name, values in ratios[clients].items():
                    values.append(rates[name] / rates["bare"])
        return Result(lab.sides, concurrencies, ratios)
    finally:
        await lab.close()


# ---------------------------------------------------------------------- the report


def report(r: Result, args: argparse.Namespace) -> None:
    names = [s.name for s in r.sides]
    print(
        f"median of {args.rounds} rounds of <= {args.messages} messages / <= {args.seconds:g} s of load, "
        f"the sides alternating ({', '.join(names)}; the first rotates); txn-outbox's defaults: "
        f"poll_ms {POLL_MS}, consumers {CONSUMERS}, inbox on, claim_idle_ms {CLAIM_IDLE_MS}; narration off"
    )
    width = max(len(n) for n in names) + 2
    for side in r.sides:
        print(f"  {side.name:<{width}}{side.label}")
    print(
        "msgs/s: sent over first send -> last effect. latency (ms): commit -> effect (bare: XADD sent -> "
        "read), split at the\nmessage's first XADD (its entry id: ms resolution); send: one send at the "
        "client. ratio: msgs/s / bare's, per round."
    )
    for clients in r.concurrencies:
        print(f"{clients} concurrent client{'s' if clients > 1 else ' (serial)'}:")
        print(
            f"  {'side':<{width}}{'msgs/s':>7}  {'(rounds)':<13}{'ratio':>6}  {'(rounds)':<13}"
            f"{'p50':>7}{'p99':>8}   {'->XADD':>7}{'XADD->':>7}{'send':>7}"
        )
        for side in r.sides:
            f = side.figures[clients]
            lat = f.latencies
            ratio, span = "1", "(itself)"
            if side.name in r.ratios[clients]:
                values = r.ratios[clients][side.name]
                ratio, span = f"{statistics.median(values):.3f}", f"{min(values):.3f}-{max(values):.3f}"
            rates = f"{min(f.rates):,.0f}-{max(f.rates):,.0f}"
            split = [percentile(f.to_xadd, 50), percentile(f.from_xadd, 50)]
            print(
                f"  {side.name:<{width}}{f.median_rate:7,.0f}  {rates:<13}{ratio:>6}  {span:<13}"
                f"{percentile(lat, 50):7.2f}{percentile(lat, 99):8.2f}   "
                f"{split[0]:7.1f}{split[1]:7.1f}{percentile(f.send_ms, 50):7.2f}"
            )
        print("  msgs/s per round:")
        for side in r.sides:
            print(f"    {side.name:<{width}}" + " ".join(f"{x:,.0f}" for x in side.figures[clients].rates))
        print(f"  CPU per message, ms (everything shares this machine's {os.cpu_count()} cores):")
        cpu = {s.name: s.figures[clients].cpu_ms_per_op() for s in r.sides}
        groups = list(next(iter(cpu.values())))
        gw = max(len(g) for g in groups) + 4
        col = max(10, *(len(n) + 2 for n in cpu))
        print(f"  {'':<{gw}}" + "".join(f"{n:>{col}}" for n in cpu))
        for group in groups:  # a process that exited mid-round can read < 0: shown as 0
            cells = "".join(f"{max(0.0, c.get(group, 0.0)):>{col}.3f}" for c in cpu.values())
            print(f"    {group:<{gw - 2}}{cells}")
        print(
            f"    {'the whole machine':<{gw - 2}}"
            + "".join(f"{sum(c.values()):>{col}.3f}" for c in cpu.values())
        )
    print(f"({ELSEWHERE}: other programs and interrupts, our loopback traffic's among them)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per concurrency (8; quick: 3)")
    parser.add_argument("--seconds", type=float, help="load per round, at most (3; quick: 1.5)")
    parser.add_argument("--messages", type=int, default=20_000, help="at most this many per round (20000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4); 1 is measured too")
    args = parser.parse_args()
    rounds, seconds, warmup = (3, 1.5, 0.5) if args.quick else (8, 3.0, 1.0)
    args.rounds = args.rounds or rounds
    args.seconds = args.seconds or seconds
    args.warmup = min(warmup, args.seconds)
    started = time.monotonic()
    status = on_own_cluster(bench, report, args, (BenchError, ScenarioError))
    if status == 0:
        print(
            f"(the benchmark took {time.monotonic() - started:.0f} s, the cluster's start and stop included)"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
