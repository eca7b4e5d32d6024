"""Ordering benchmark: ordered events/s through three real worker processes against a bare
stream consumer, the share of orders a ring change moves, and what keeping the workers'
pending counts fresh costs — in one run.

Starts its own local cluster (the same code as ``coordscope up``, its Redis members
alone: nothing here uses ZooKeeper or PostgreSQL) in a temporary folder. The queues and
the orders live on ``redis-1``, the scenario's node (it has a replica); the run hashes
and the services' heartbeats on ``redis-2``.

1. Ordered events/s end to end, 3 workers. Producers in this process (``--producers``
   tasks, each with its own orders, ``--window`` of them interleaved, every order's
   events seq 1..4 in order) route each event with the scenario's ``Router``
   (``route=consistent-hash``: Dubbo's ring, 160 virtual nodes) and ``XADD`` it to its
   worker's stream (``coordscope.worker_queue_key``), ``--pipeline`` XADDs per round
   trip. Consumed by, in alternating rounds:

   - bare: 3 bare consumer processes (this file, ``--bare-consumer``: a synchronous
     redis-py loop of ``XREADGROUP COUNT 64`` and one ``XACK`` of the batch; no apply):
     the ceiling;
   - ours: 3 real ``scenarios.ordering.worker`` processes started through
     ``ServiceSet`` (``--route consistent-hash --narrate off --work-ms 0 --jitter-ms 0``),
     ``--dedup on`` and, in a round of their own, ``--dedup off``: each event applied
     with the Lua ``APPLY`` script, then acknowledged. A run hash with a live heartbeat
     per dedup mode keeps them up.

   A round is timed from its first XADD until every stream's group has delivered the
   last entry sent to it and has nothing pending (``XINFO GROUPS``, polled once the
   producers are done). Then it is checked: every group read exactly what was sent to
   its stream (``entries-read``); for ours, every order's log is ``1 2 3 4``, each
   applied once (``collectors.sequence``), and one ``EVALSHA`` ran per batch a worker read
   (at most one per event); otherwise
   it fails loudly (exit 1). Reported: the median events/s of each side, the median of
   the per-round ratios ours / bare (goal >= 0.5) with the bare rate beside it, the
   Redis commands per event and their server µs, and CPU µs per event by process
   (``/proc/<pid>/task/*/schedstat``): on a small machine the rate is set by CPU.
2. The share of orders moved when the ring changes (pure computation): for n = 3..8
   workers over 10,000 and 100,000 keys, ``HashRing`` with 160 virtual nodes; a worker
   added (n -> n+1, as the scenario's ``add-worker``: appended) against 1/(n+1), and
   whether every moved key went to the new worker; a worker removed (n -> n-1; the
   last one, as the scenario's ``remove-worker`` does, and each one in turn: min-max)
   against 1/n, and whether every moved key came from the leaver.
3. What keeping pending counts fresh costs: ``XREADGROUP``/``XACK`` send no keyspace
   notification, so the collector re-reads the groups of every stream that has some
   every ``REFRESH_EVERY_S``. ``bench/queues.py``'s :func:`measure` on ``redis-1``
   (emptied, after the load) for 0, 3 and 100 streams with a group: group commands/s
   (per stream) and the server µs per refresh (``INFO commandstats``).

Every loop is bounded in count and time; the workers, the bare consumers and the
cluster are stopped by PID, on Ctrl-C or an error too.

    .venv/bin/python -m bench.ordering [--quick] [--rounds 6] [--orders 12000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import secrets
import signal
import statistics
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis

from app.cluster import ClusterInfo, LocalCluster
from app.cluster_member import Member
from bench.idempotency import Stats, commandstats, delta
from bench.lab import interrupted, on_own_cluster
from bench.queues import measure as measure_refresh
from collectors.layouts import coordscope
from collectors.redis_streams import REFRESH_EVERY_S
from collectors.sequence import missing, sequence_breaches
from scenarios.kit.clients import redis_client
from scenarios.kit.history import RunRecord
from scenarios.kit.rounds import ELSEWHERE, Meter, Rounds
from scenarios.kit.rounds import Round as BaseRound
from scenarios.kit.services import ServiceSet, runs_dir
from scenarios.ordering.hash_ring import DEFAULT_VNODES, HashRing, key_point
from scenarios.ordering.ordering import schedule
from scenarios.ordering.router import Router
from scenarios.ordering.worker import BATCH, EVENTS

SCRIPT = Path(__file__).resolve()
ROOT = str(SCRIPT.parents[1])
"""The project's folder: the bare consumers (this file) import the project from it."""
MODULE = "scenarios.ordering.worker"
WORKERS = ("worker-1", "worker-2", "worker-3")
ROUTE = "consistent-hash"
DEDUPS = ("on", "off")
GOAL = 0.5
POLL_S = 0.002
"""How often a round's end is looked for, once the producers are done."""
CLEAN_BATCH = 1000
BARE_LIFETIME_S = 900.0
"""A bare consumer exits by itself after this long (or as soon as this process is gone)."""
SPAWN_TIMEOUT_S = 20.0
RING_SIZES = range(3, 9)
RING_KEYS = (10_000, 100_000)
CHECKED_KEYS = 2000
"""Keys whose owner the ring's own ``node_for`` decides too: the bench's faster lookup
(a bisect on the precomputed points) must agree with it."""
REFRESH_STREAMS = (0, 3, 100)
CONSUMERS = "consumers (bare or workers)"
BUSY_CORES = 0.25
"""Other programs used this much CPU during the rounds, on average: the figures are noisy."""


class BenchError(Exception):
    """What was measured is wrong: an order applied out of order or twice, an event lost."""


# ---------------------------------------------------------------------- 2. the ring


@dataclass
class RingRow:
    workers: int
    keys: int
    added: float
    """Share of keys moved by adding a worker (n -> n+1)."""
    added_ok: bool
    """Every moved key went to the new worker."""
    removed_last: float
    """Share moved by removing the last worker (n -> n-1)."""
    removed_range: tuple[float, float]
    """Min and max over which worker leaves."""
    removed_ok: bool
    """Every moved key came from the leaver (none moved between the others)."""


def owners(ring: HashRing, points: Sequence[int], keys: Sequence[str]) -> list[str]:
    """The worker of each key: the first virtual node at or after its point, wrapping —
    ``HashRing.node_for`` on precomputed points (checked against it on the first keys)."""
    at = [v.point for v in ring.ring]
    names = [v.worker for v in ring.ring]
    found = [names[bisect_left(at, p) % len(at)] for p in points]
    for key, owner in zip(keys[:CHECKED_KEYS], found, strict=False):
        if ring.node_for(key) != owner:
            raise BenchError(f"the bench's lookup says {owner} for {key}, the ring {ring.node_for(key)}")
    return found


def ring_moves(sizes: Sequence[int], counts: Sequence[int], vnodes: int) -> list[RingRow]:
    names = [f"worker-{i + 1}" for i in range(max(sizes) + 1)]
    rows = []
    for count in counts:
        keys = [f"order-{i + 1}" for i in range(count)]
        points = [key_point(k) for k in keys]
        of = {
            n: owners(HashRing.build(names[:n], vnodes), points, keys)
            for n in range(min(sizes), max(sizes) + 2)
        }
        for n in sizes:
            before, grown = of[n], of[n + 1]
            moved = [i for i in range(count) if before[i] != grown[i]]
            added_ok = all(grown[i] == names[n] for i in moved)
            shares, removed_ok = {}, True
            for leaver in names[:n]:
                after = owners(HashRing.build([w for w in names[:n] if w != leaver], vnodes), points, keys)
                gone = [i for i in range(count) if before[i] != after[i]]
                removed_ok &= all(before[i] == leaver for i in gone) and len(gone) == before.count(leaver)
                shares[leaver] = len(gone) / count
            rows.append(
                RingRow(
                    n,
                    count,
                    len(moved) / count,
                    added_ok,
                    shares[names[n - 1]],
                    (min(shares.values()), max(shares.values())),
                    removed_ok,
                )
            )
    return rows


# ---------------------------------------------------------------------- the bare consumer


def bare_consumer(args: argparse.Namespace) -> int:
    """The ceiling's consumer: read up to 64 entries, acknowledge them, nothing else."""
    client = redis.Redis.from_url(args.redis, protocol=2)
    client.ping()
    parent = os.getppid()
    deadline = time.monotonic() + args.max_seconds
    print("ready", flush=True)
    while time.monotonic() < deadline and os.getppid() == parent:
        reply: Any = client.xreadgroup(args.group, args.consumer, {args.stream: ">"}, count=BATCH, block=100)
        for _, entries in reply or ():
            if entries:
                client.xack(args.stream, args.group, *(e[0] for e in entries))
    return 0


# ---------------------------------------------------------------------- 1. the load


@dataclass
class Round(BaseRound):
    """``count`` events (no latency is measured: ``latencies_ms`` stays empty)."""

    commands: Stats
    """On the queues' node, during the round."""


@dataclass
class Side(Rounds):
    """One consumer kind's streams, processes and rounds (``count``: events)."""

    label: str
    run_id: str
    dedup: str | None
    """None: the bare consumers."""
    pids: Callable[[], list[int]] = lambda: []
    rounds: list[Round] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    """Stream -> events sent to it so far, every round (its group must have read as many)."""

    def stream(self, worker: str) -> str:
        return coordscope.worker_queue_key(self.run_id, worker)

    @property
    def streams(self) -> list[str]:
        return [self.stream(w) for w in WORKERS]

    def per_event(self) -> tuple[dict[str, float], dict[str, float], float]:
        """(commands per event, CPU µs per event by process group, server µs per event)."""
        calls: dict[str, int] = {}
        usec = 0
        cpu: dict[str, float] = {}
        for r in self.rounds:
            for name, (c, u) in r.commands.items():
                if name.startswith("xinfo"):  # our polling for the round's end
                    continue
                calls[name] = calls.get(name, 0) + c
                usec += u
            for name, s in r.cpu.items():
                cpu[name] = cpu.get(name, 0.0) + s
        n = max(1, self.count)
        return (
            {k: c / n for k, c in calls.items()},
            {k: 1e6 * s / n for k, s in cpu.items()},
            usec / n,
        )


def _id(raw: Any) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition("-")
    return int(ms), int(seq or 0)


async def produce(
    store: Redis, router: Router, side: Side, name: str, events: list[tuple[str, int]], pipeline: int
) -> dict[str, tuple[int, int]]:
    """Send ``events`` in order, ``pipeline`` XADDs a round trip; the last id per stream."""
    last: dict[str, tuple[int, int]] = {}
    for start in range(0, len(events), pipeline):
        pipe = store.pipeline(transaction=False)
        streams = []
        for order, seq in events[start : start + pipeline]:
            stream = side.stream(await router.route_of(order, seq, store))
            pipe.xadd(stream, {"order": order, "seq": seq, "event": EVENTS[seq - 1], "producer": name})
            streams.append(stream)
        for stream, entry in zip(streams, await pipe.execute(), strict=True):
            last[stream] = max(last.get(stream, (0, 0)), _id(entry))
            side.sent[stream] = side.sent.get(stream, 0) + 1
    return last


async def drained(store: Redis, side: Side, last: dict[str, tuple[int, int]], timeout_s: float) -> None:
    """Until every stream's group has delivered its last entry and has nothing pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        pipe = store.pipeline(transaction=False)
        for stream in side.streams:
            pipe.xinfo_groups(stream)
        replies = await pipe.execute()
        state = {s: _group(reply) for s, reply in zip(side.streams, replies, strict=True)}
        if all(
            g is not None
            and not int(g.get("pending", 0))
            and _id(g["last-delivered-id"]) >= last.get(s, (0, 0))
            for s, g in state.items()
        ):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{side.label}: the queues did not drain within {timeout_s:g} s: {state}")
        await asyncio.sleep(POLL_S)
    for stream, g in state.items():
        assert g is not None
        read = g.get("entries-read")
        if read is not None and int(read) != side.sent.get(stream, 0):
            raise BenchError(
                f"{side.label}: {stream} was sent {side.sent.get(stream, 0)} events in all, "
                f"its group read {read}"
            )


def _group(reply: Any) -> dict[str, Any] | None:
    for g in reply or ():
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == coordscope.WORKER_GROUP:
            return dict(g)
    return None


async def check_orders(store: Redis, run_id: str, orders: list[str]) -> None:
    """Every order's log is 1 2 3 4, each applied once, and its state says seq 4."""
    wrong = []
    for start in range(0, len(orders), CLEAN_BATCH):
        chunk = orders[start : start + CLEAN_BATCH]
        pipe = store.pipeline(transaction=False)
        for order in chunk:
            pipe.hmget(coordscope.order_key(run_id, order), ["log", "seq"])
        for order, (log, seq) in zip(chunk, await pipe.execute(), strict=True):
            text = log.decode() if log else ""
            applied = [int(e.split()[0]) for e in text.split(";") if e]
            breaches = sequence_breaches(applied)
            lost = missing(applied, len(EVENTS))
            if breaches or lost or seq != str(len(EVENTS)).encode():
                wrong.append(f"{order}: applied {applied}, breaches {breaches}, lost {lost}")
    if wrong:
        raise BenchError(f"{len(wrong)} of {len(orders)} orders are wrong, e.g. {wrong[:3]}")


# ---------------------------------------------------------------------- the lab


class RedisOnlyCluster(LocalCluster):
    """The local cluster's Redis members alone. ``LocalCluster`` has no switch to leave
    ZooKeeper and PostgreSQL out, and this benchmark uses neither: a JVM and a database
    idling on the same cores would only add noise (and ``up`` would ``initdb`` a fresh
    PostgreSQL for every temporary folder)."""

    def _plan(self, masters: int, zk_servers: int = 1, redis_cluster: bool = False) -> ClusterInfo:
        info = super()._plan(masters, zk_servers, redis_cluster)
        return replace(info, members=tuple(m for m in info.members if m.kind == "redis"))


def _pid(member: Member) -> Callable[[], list[int]]:
    return lambda: [member.pid]


class Lab:
    """What the benchmark starts on the cluster, and stops (by PID) in :meth:`close`."""

    def __init__(self, info: ClusterInfo, args: argparse.Namespace) -> None:
        self.info = info
        self.args = args
        targets = {t.id: t for t in info.redis_targets()}
        self.node, self.control_node = info.masters[0], info.masters[-1]
        self.target = targets[self.node.name]
        self.control_target = targets[self.control_node.name]
        self.store = redis_client(self.target)
        self.control = redis_client(self.control_target)
        self.tag = f"{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
        self.bare = Side("bare", f"bench-ordering-bare-{self.tag}", None)
        self.bare_procs: list[asyncio.subprocess.Process] = []
        self.bare.pids = lambda: [p.pid for p in self.bare_procs if p.returncode is None]
        self.ours: dict[str, Side] = {
            d: Side(f"ours, dedup={d}", f"bench-ordering-dedup-{d}-{self.tag}", d) for d in DEDUPS
        }
        self._service_sets: dict[str, ServiceSet] = {}
        self._records: list[RunRecord] = []
        self._heartbeats: list[asyncio.Task[None]] = []
        for d, side in self.ours.items():
            side.pids = self._workers_of(d)
        replicas = [m for m in info.members if m.kind == "redis" and m.master == self.node.name]
        consuming: dict[str, Callable[[], list[int]]] = {
            CONSUMERS: lambda: [],  # the round's side's, set in _round
            f"{self.node.name} (queues, orders)": _pid(self.node),
            **{f"{m.name} (its replica)": _pid(m) for m in replicas},
        }
        self.consuming = list(consuming)
        """The process groups whose CPU the consumers' kind changes (not the producers')."""
        self.groups: dict[str, Callable[[], list[int]]] = {
            "bench: producers (this process)": lambda: [os.getpid()],
            **consuming,
            f"{self.control_node.name} (control: heartbeats)": _pid(self.control_node),
        }

    def _workers_of(self, dedup: str) -> Callable[[], list[int]]:
        def pids() -> list[int]:
            services = self._service_sets.get(dedup)
            return [s.pid for s in services.services.values() if s.pid] if services else []

        return pids

    async def start(self) -> None:
        for d, side in self.ours.items():
            record = RunRecord(self.control, side.run_id)
            params: dict[str, str | int] = {"route": ROUTE, "workers": len(WORKERS), "dedup": d}
            await record.create("ordering", params, [], "bench/ordering.py")
            self._records.append(record)
            # the workers stop by themselves unless their run is "running" with a fresh heartbeat
            self._heartbeats.append(asyncio.create_task(record.heartbeat(lambda: {}, asyncio.Event())))
            services = ServiceSet(
                side.run_id, self.control_target.url, time.monotonic(), control=self.control
            )
            self._service_sets[d] = services
            args = [
                "--route", ROUTE, "--redis", self.target.url, "--dedup", d, "--narrate", "off",
                "--work-ms", "0", "--jitter-ms", "0", "--seed", "1",
            ]  # fmt: skip
            for stream in side.streams:  # as the scenario does before it starts a worker
                await self.store.xgroup_create(stream, coordscope.WORKER_GROUP, id="$", mkstream=True)
            await asyncio.gather(*(services.start(w, "ordering-worker", MODULE, args) for w in WORKERS))
        for i, stream in enumerate(self.bare.streams):
            await self.store.xgroup_create(stream, coordscope.WORKER_GROUP, id="$", mkstream=True)
            await self._spawn_bare(stream, f"bare-{i + 1}")

    async def _spawn_bare(self, stream: str, consumer: str) -> None:
        """Start a bare consumer (this file) and wait until it reads; its errors go to a log
        beside the workers'."""
        path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        folder = runs_dir() / self.bare.run_id
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / f"{consumer}.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), "--bare-consumer",
                "--redis", self.target.url, "--stream", stream, "--group", coordscope.WORKER_GROUP,
                "--consumer", consumer, "--max-seconds", str(BARE_LIFETIME_S),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        finally:
            log.close()
        self.bare_procs.append(proc)  # stopped by close() from now on, ready or not
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), SPAWN_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await _stop(proc)
            tail = (folder / f"{consumer}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"the bare consumer {consumer} did not start: {' | '.join(tail)}")

    async def close(self) -> None:
        for services in self._service_sets.values():  # SIGTERM by PID (process group), SIGKILL what overstays
            with contextlib.suppress(Exception):
                await services.stop_all(timeout=10)
        for proc in self.bare_procs:
            await _stop(proc)
        for task in self._heartbeats:
            task.cancel()
        await asyncio.gather(*self._heartbeats, return_exceptions=True)
        for record in self._records:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(record.finish("done", None), 5)
        await self.store.aclose()
        await self.control.aclose()

    async def round_of(self, side: Side, n: int, orders_n: int) -> Round:
        """One round: ``orders_n`` orders' events through ``side``'s consumers, checked;
        at most ``--timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._round(side, n, orders_n), self.args.timeout)
        except TimeoutError:
            raise BenchError(f"{side.label}: round {n} took more than {self.args.timeout:g} s") from None

    async def _round(self, side: Side, n: int, orders_n: int) -> Round:
        args = self.args
        orders = [f"r{n}-order-{i + 1}" for i in range(orders_n)]
        router = Router(side.run_id, ROUTE, list(WORKERS), args.vnodes, orders)
        deal = [orders[p :: args.producers] for p in range(args.producers)]
        rng = random.Random(n)  # every side of a round gets the same events in the same order
        plans = [schedule(mine, args.window, rng) for mine in deal]
        groups = {**self.groups, CONSUMERS: side.pids}
        meter = Meter(groups)
        meter.start()
        stats0 = await commandstats(self.store)
        t0 = time.perf_counter()
        lasts = await asyncio.gather(
            *(
                produce(self.store, router, side, f"producer-{p + 1}", plan, args.pipeline)
                for p, plan in enumerate(plans)
            )
        )
        last: dict[str, tuple[int, int]] = {}
        for found in lasts:
            for stream, entry in found.items():
                last[stream] = max(last.get(stream, (0, 0)), entry)
        await drained(self.store, side, last, args.timeout)
        took = time.perf_counter() - t0
        stats1 = await commandstats(self.store)
        cpu = meter.stop()
        events = sum(len(p) for p in plans)
        commands = delta(stats1, stats0)
        if side.dedup is not None:
            await check_orders(self.store, side.run_id, orders)
            applies = commands.get("evalsha", (0, 0))[0]
            if not 0 < applies <= events:  # one script call per batch read (at most one per event)
                raise BenchError(f"{side.label}: {events} events sent, {applies} EVALSHA applies")
        await self._clean(side, orders)
        return Round(count=events, seconds=took, cpu=cpu, latencies_ms=[], commands=commands)

    async def _clean(self, side: Side, orders: list[str]) -> None:
        """Empty the streams (their groups stay) and drop the round's orders and marks."""
        pipe = self.store.pipeline(transaction=False)
        for stream in side.streams:
            pipe.xtrim(stream, maxlen=0, approximate=False)
        await pipe.execute()
        if side.dedup is None:
            return
        keys = [coordscope.order_key(side.run_id, o) for o in orders]
        if side.dedup == "on":
            keys += [
                coordscope.event_mark_key(side.run_id, o, s)
                for o in orders
                for s in range(1, len(EVENTS) + 1)
            ]
        for start in range(0, len(keys), CLEAN_BATCH):
            await self.store.unlink(*keys[start : start + CLEAN_BATCH])


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM its process group (it leads one), SIGKILL if it overstays."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), 5)
            return
        except TimeoutError:
            continue


@dataclass
class Result:
    bare: Side
    ours: dict[str, Side]
    ratios: dict[str, list[float]]
    node: str
    consuming: list[str]
    rings: list[RingRow]
    refresh: list[dict[str, float]]


async def bench(info: ClusterInfo, args: argparse.Namespace, rings: list[RingRow]) -> Result:
    lab = Lab(info, args)
    try:
        await lab.start()
        sides = [lab.bare, *lab.ours.values()]
        # warm up (not counted): connections opened, the script loaded, every path run once
        for side in sides:
            await lab.round_of(side, 0, max(100, args.orders // 10))
        ratios: dict[str, list[float]] = {d: [] for d in DEDUPS}
        for n in range(1, args.rounds + 1):
            for side in sides:  # bare, ours (dedup=on), ours (dedup=off), bare, ...
                side.rounds.append(await lab.round_of(side, n, args.orders))
            for d, side in lab.ours.items():
                ratios[d].append(side.rounds[-1].rate / lab.bare.rounds[-1].rate)
    finally:
        await lab.close()
    # the queues' node is idle now: measure the refresh there (it is emptied first)
    refresh = [await measure_refresh(lab.node.port, n, args.refresh_seconds) for n in REFRESH_STREAMS]
    return Result(lab.bare, lab.ours, ratios, lab.node.name, lab.consuming, rings, refresh)


# ---------------------------------------------------------------------- the report


def line(label: str, value: str) -> None:
    print(f"  {label:<58}{value}")


def rates(side: Side) -> str:
    return f"{side.median_rate:8,.0f}/s  (rounds {min(side.rates):,.0f}-{max(side.rates):,.0f})"


def report(r: Result, args: argparse.Namespace) -> None:
    bare = r.bare
    print(
        f"1. ordered events/s end to end: {len(WORKERS)} workers, route={ROUTE} ({args.vnodes} vnodes), "
        f"{args.producers} producers (window {args.window}, {args.pipeline} XADDs a round trip);"
    )
    print(
        f"   {args.orders:,} orders x {len(EVENTS)} events a round, median of {args.rounds} alternating "
        f"rounds (bare, dedup=on, dedup=off, ...); queues and orders on {r.node}:"
    )
    line(f"bare ceiling (XREADGROUP COUNT {BATCH} + XACK, no apply)", rates(bare))
    for d, side in r.ours.items():
        line(f"ours: scenarios.ordering.worker, dedup={d}", rates(side))
    for d, ratios in r.ratios.items():
        ratio = statistics.median(ratios)
        line(
            f"ratio ours(dedup={d}) / bare (goal >= {GOAL})",
            f"{ratio:8.2f}x  (rounds {min(ratios):.2f}-{max(ratios):.2f}; bare {bare.median_rate:,.0f}/s)"
            + ("" if ratio >= GOAL else "  BELOW THE GOAL"),
        )
    line("  per round: bare", " ".join(f"{x:,.0f}" for x in bare.rates))
    for d, side in r.ours.items():
        line(f"  per round: dedup={d}", " ".join(f"{x:,.0f}" for x in side.rates))
        line(f"  per round: ratio dedup={d}", " ".join(f"{x:.2f}" for x in r.ratios[d]))
    orders = args.orders * args.rounds
    line(
        "checked",
        f"every order's log 1 2 3 4, once each ({orders:,} orders per dedup mode); "
        "every event read and acked",
    )
    sides = [bare, *r.ours.values()]
    labels = ["bare", *(f"dedup={d}" for d in r.ours)]
    per = [s.per_event() for s in sides]
    print(f"   per event, on {r.node} (INFO commandstats; without our XINFO polling) and CPU µs by process:")
    line("", "".join(f"{x:>12}" for x in labels))
    names = sorted({k for cmds, _, _ in per for k in cmds if any(p[0].get(k, 0) >= 0.01 for p in per)})
    for name in names:
        line(f"{name} per event", "".join(f"{p[0].get(name, 0.0):>12.3f}" for p in per))
    line("server µs per event (commands above)", "".join(f"{p[2]:>12.2f}" for p in per))
    for group in per[0][1]:
        line(f"CPU µs: {group}", "".join(f"{p[1].get(group, 0.0):>12.1f}" for p in per))
    line("CPU µs: the whole machine", "".join(f"{sum(p[1].values()):>12.1f}" for p in per))
    consuming = [sum(v for k, v in p[1].items() if k in r.consuming) for p in per]
    line(
        "CPU µs: the consuming side (consumers, Redis, replica)",
        "".join(f"{c:>12.1f}" for c in consuming)
        + "   bare/ours "
        + " ".join(f"{consuming[0] / c:.2f}" for c in consuming[1:]),
    )
    elsewhere = [
        sum(x.cpu.get(ELSEWHERE, 0.0) for x in s.rounds) / sum(x.seconds for x in s.rounds) for s in sides
    ]
    line(
        f"{ELSEWHERE}, in cores on average",
        "".join(f"{e:>12.2f}" for e in elsewhere)
        + ("   (busy: noisy figures)" if max(elsewhere) > BUSY_CORES else ""),
    )

    print(
        f"2. share of keys moved by a ring change (HashRing, {args.vnodes} vnodes; "
        "add: worker n+1 appended; remove: the last worker, and each one in turn):"
    )
    print(
        f"  {'n':>3} {'keys':>8}  {'add n->n+1':>10} {'1/(n+1)':>8} {'to new':>7}   "
        f"{'remove last':>11} {'1/n':>6} {'any leaver: min-max':>20} {'from it':>8}"
    )
    for row in r.rings:
        lo, hi = row.removed_range
        print(
            f"  {row.workers:>3} {row.keys:>8,}  {row.added:>10.1%} {1 / (row.workers + 1):>8.1%} "
            f"{'all' if row.added_ok else 'NO':>7}   {row.removed_last:>11.1%} {1 / row.workers:>6.1%} "
            f"{f'{lo:.1%}-{hi:.1%}':>20} {'all' if row.removed_ok else 'NO':>8}"
        )

    print(
        f"3. keeping pending counts fresh: the collector re-reads stream groups every {REFRESH_EVERY_S:g} s "
        f"(bench/queues.py's measure, {args.refresh_seconds:g} s each, idle streams with a group):"
    )
    print(
        f"  {'streams':>8} {'group cmds/s':>13} {'per stream':>11} {'server µs/refresh':>18} "
        f"{'per stream':>11} {'server CPU %':>13}"
    )
    for cost in r.refresh:
        n = int(cost["streams"])
        us = cost["server_us_per_refresh"]
        print(
            f"  {n:>8} {cost['group_cmds_per_s']:>13.1f} "
            f"{(cost['group_cmds_per_s'] / n if n else float('nan')):>11.2f} {us:>18.1f} "
            f"{(us / n if n else float('nan')):>11.2f} {cost['server_cpu_pct']:>13.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (~20 s)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of each side (6; quick: 3)")
    parser.add_argument("--orders", type=int, help="orders per round, 4 events each (12000; quick: 3000)")
    parser.add_argument("--producers", type=int, default=4, help="producer tasks (4)")
    parser.add_argument("--window", type=int, default=8, help="orders a producer interleaves (8)")
    parser.add_argument("--pipeline", type=int, default=64, help="XADDs per round trip (64)")
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES, help="virtual nodes per worker (160)")
    parser.add_argument("--timeout", type=float, default=60.0, help="at most this long per round (60)")
    parser.add_argument("--refresh-seconds", type=float, help="per stream count, part 3 (4; quick: 1.5)")
    # the bare consumer, started by the benchmark itself
    parser.add_argument("--bare-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--consumer", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=BARE_LIFETIME_S, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_consumer:
        with contextlib.suppress(KeyboardInterrupt):
            return bare_consumer(args)
        return 0
    rounds, orders, refresh_s = (3, 3000, 1.5) if args.quick else (6, 12000, 4.0)
    args.rounds = args.rounds or rounds
    args.orders = args.orders or orders
    args.refresh_seconds = args.refresh_seconds or refresh_s
    signal.signal(signal.SIGTERM, interrupted)  # the ring's moves come before the cluster
    try:
        rings = ring_moves(RING_SIZES, RING_KEYS, args.vnodes)  # no server: before the cluster
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return on_own_cluster(
        functools.partial(bench, rings=rings),
        report,
        args,
        (BenchError,),
        cluster=RedisOnlyCluster,
        masters=2,
    )


if __name__ == "__main__":
    sys.exit(main())
