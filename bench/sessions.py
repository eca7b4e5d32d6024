"""Sessions benchmark: requests/s through HAProxy with ``store=redis`` against
``store=local``, in the same run, and the delay from a session's TTL end to a viewer
seeing it expired.

Starts its own local cluster (the same code as ``coordscope up``) in a temporary
folder. The sessions live on ``redis-1`` (the scenario's session node, which has a
replica); the run hash and the instances' heartbeats on the last master. A run hash
with a live heartbeat keeps the instances up while it measures.

1. Requests/s. Per store, three real ``scenarios.sessions.app`` processes (the
   scenario's app instances, started through ``ServiceSet``) behind one HAProxy
   (``scenarios.kit.balancer``, the scenario's configuration):

   - ``store=redis``: Spring Session's layout on ``redis-1``, HAProxy round robin per
     request — the point of the store: any instance serves any request;
   - ``store=local``: in-process, sticky so each request finds its session (HAProxy's
     cookie stickiness, ``store=sticky`` in the scenario's words): round robin would
     send two requests of three to an instance that never saw the session (401), and
     the figures would not compare like with like;
   - ``store=container`` with ``--container``: one opaque blob per session on
     ``redis-1``, round robin;
   - the raw ceiling: the same load sent straight to one more instance with
     ``store=local``, no HAProxy. local / ceiling is what HAProxy costs (and, on a
     small machine, what three instances gain or lose against one); redis / local is
     what the Redis store costs.

   Load: ``--users`` (16) concurrent users in this process (asyncio), each with its
   own ``httpx`` client and cookie jar (the session's cookie, HAProxy's ``SERVERID``),
   as the scenario's browsers. A round: every user logs in once (not timed), then the
   users take requests in turn — each alternately ``GET /browse`` and ``POST /cart`` —
   at most ``--requests`` in all and none started after ``--seconds``. Rounds
   alternate the stores (redis, local, [container,] ceiling, redis, ...); one warm-up
   round each first, not counted. Reported: each store's median requests/s and its
   median per-round ratio to the ceiling, the median of the per-round ratios redis /
   local (goal >= 0.7), p50 / p99 latency per request at the client (every round of a
   store pooled), and CPU per request by process (``/proc/<pid>/task/*/schedstat``,
   over the timed requests alone): on a small machine the rate is set by CPU, and the
   client (httpx, about 0.6 ms of CPU a request) shares the cores with the servers, so
   the report also gives the servers' CPU per request alone (instances, HAProxy,
   Redis) — their local / redis is what the rate ratio would be, CPU-bound, with the
   client on another machine.

   After every round it checks what it measured: every reply a 200 naming the user
   and the session it logged in with, every cart holding exactly the items that user
   added, in order (a session lost or mixed up shows there); under round robin each
   user was served by several instances and the users together by every one, under
   stickiness (and straight to the ceiling) each by one. Otherwise it fails loudly
   (exit 1).

2. TTL end -> the viewer sees it expired. A viewer (``collectors.observatory``'s
   ``Observatory`` on the whole cluster, default settings, behind an ``app.bus.Bus``:
   what ``coordscope`` runs) is started and synced. ``--sessions`` (100) sessions are
   written straight with ``SpringStore.save(..., new=True)`` on ``redis-1``, spread over
   about a second, idle timeouts of 2, 3 and 4 s in turn; each one's TTL end is the wall
   clock plus the ``PTTL`` of its ``sessions:expires:<id>`` shadow, read right after
   writing it. Nobody touches them again: Redis expires the shadows lazily (on access,
   and none comes) and in its sampled expiry cycles (``hz``), so a user sees the
   expiry when that cycle finds the key. Measured:

   - the raw ceiling: a bare redis-py pub/sub subscriber to ``__keyevent@0__:expired``
     on ``redis-1``: when Redis's own ``expired`` event for each shadow arrives, after
     its TTL end — Redis's lazy, sampled expiry;
   - the viewer: when a flush of the bus first delivers the session with
     ``state == "expired"``, after its TTL end; and its extra cost on top of Redis's
     event, per session.

   Both listen in this process, at once, on the same sessions (the per-session
   difference is paired). The app instances are stopped and part 1's keys deleted
   first. With notifications on, the collector does not scan, so it does not trigger
   the lazy expiry itself. Every session must be seen live, then expired, by the viewer
   and have its ``expired`` event within ``EXPIRY_WAIT_S`` of its TTL end (else it
   fails, exit 1).

Everything written (``coordscope:session:{<run>}:*`` on ``redis-1``) is deleted at the
end. Every loop is bounded in count and time; the instances, HAProxy and the cluster
are stopped by PID, on Ctrl-C or an error too.

    .venv/bin/python -m bench.sessions [--quick] [--rounds 10] [--requests 3000] [--container]
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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from redis.asyncio import Redis

from app.bus import Bus, Delivery
from app.cluster import ClusterInfo
from app.cluster_member import Member
from bench.lab import on_own_cluster
from collectors.events import Snapshot, Upserted
from collectors.families.sessions import Session
from collectors.layouts.coordscope import session_namespace
from collectors.observatory import Observatory
from collectors.targets import RedisTarget, free_port
from scenarios.kit.balancer import Backend, Balancer
from scenarios.kit.clients import redis_client
from scenarios.kit.history import RunRecord
from scenarios.kit.rounds import ELSEWHERE, Meter, Rounds, percentile, rate_line
from scenarios.kit.rounds import Round as Round
from scenarios.kit.services import Service, ServiceSet
from scenarios.sessions.spring import SpringStore
from scenarios.sessions.stores import GRACE_S, USER, SessionData, now_ms

MODULE = "scenarios.sessions.app"
INSTANCES = 3
IDLE_S = 3600
"""Part 1's sessions outlive the run (they are deleted at its end)."""
REQUEST_TIMEOUT_S = 10.0
GOAL = 0.7
EXPIRY_IDLE_S = (2, 3, 4)
"""Part 2's idle timeouts, in turn."""
WRITE_SPREAD_S = 1.0
"""Part 2's sessions are written over this long: their TTL ends fall at every phase of
Redis's expiry cycle (every 100 ms at ``hz 10``)."""
EXPIRY_WAIT_S = 15.0
"""How long after its TTL end a session must be seen expired."""
SYNC_TIMEOUT_S = 20.0

CLIENT = "bench client (this process)"
"""Busy CPU time not spent by any process above: other programs, and interrupts."""

LABELS = {
    "redis": "store=redis (Spring Session; round robin: any instance serves)",
    "local": "store=local (in-process, sticky so each request finds its session)",
    "container": "store=container (one opaque blob; round robin)",
    "ceiling": "raw ceiling: one instance, store=local, no HAProxy",
}


class BenchError(Exception):
    """What was measured is wrong (a 401, another user's session, a cart missing an item)."""


# ---------------------------------------------------------------------- figures


@dataclass
class Side(Rounds):
    """One store's instances and HAProxy (or the raw ceiling's one instance) and its rounds."""

    name: str
    services: list[Service] = field(default_factory=list)
    balancer: Balancer | None = None
    rounds: list[Round] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    """How many instances served each user, every round pooled."""

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def address(self) -> str:
        return self.balancer.address if self.balancer is not None else self.services[0].address

    @property
    def round_robin(self) -> bool:
        return self.balancer is not None and not self.balancer.sticky


# ---------------------------------------------------------------------- the load


class User:
    """One user's browser: its own client and cookies, what it logged in with, what it added."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.client = httpx.AsyncClient(
            base_url=f"http://{address}", trust_env=False, timeout=REQUEST_TIMEOUT_S
        )
        self.session = ""
        self.cart: list[str] = []
        self.sent = 0
        self.instances: set[str] = set()

    async def login(self) -> None:
        resp = await self.client.post("/login", json={"user": self.name})
        body = _body(resp)
        if resp.status_code != 200 or body.get("user") != self.name or not body.get("session"):
            raise BenchError(f"{self.name}: login answered {resp.status_code} {body}"[:300])
        self.session = str(body["session"])
        self.instances.add(str(body.get("instance")))

    async def request(self) -> str | None:
        """The next request (browse, cart, browse, ...): None, or what went wrong."""
        self.sent += 1
        item = ""
        try:
            if self.sent % 2:
                resp = await self.client.get("/browse")
            else:
                item = f"{self.name}:{self.sent}"
                resp = await self.client.post("/cart", json={"item": item})
        except httpx.HTTPError as exc:
            return f"no reply ({type(exc).__name__}: {exc})"
        body = _body(resp)
        if item:
            self.cart.append(item)
        self.instances.add(str(body.get("instance")))
        if resp.status_code != 200:
            return f"{'cart' if item else 'browse'}: {resp.status_code} {body}"
        if body.get("user") != self.name or body.get("session") != self.session:
            return f"another session: {body.get('user')} {body.get('session')} (logged in as {self.session})"
        if body.get("cart") != self.cart:
            got = body.get("cart") or []
            return f"the cart has {len(got)} items, {len(self.cart)} added (last {got[-1:]})"
        return None

    async def aclose(self) -> None:
        await self.client.aclose()


def _body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"text": resp.text[:200]}
    return body if isinstance(body, dict) else {"value": body}


async def drive(
    address: str, prefix: str, requests: int, seconds: float, users: int, meter: Meter
) -> tuple[int, list[float], float, list[str], list[set[str]]]:
    """``users`` browsers, logged in, taking requests 0, 1, 2, ... in turn: at most
    ``requests``, and none started after ``seconds``. Returns (the requests sent, their
    latencies in ms, the seconds it took, what went wrong, the instances each user met).
    ``meter`` reads the CPU clocks around the requests alone (a client's creation, with its
    TLS context, and the logins would weigh on a short round)."""
    browsers = [User(f"{prefix}u{c}", address) for c in range(users)]
    latencies: list[float] = []
    failures: list[str] = []
    try:
        await asyncio.gather(*(b.login() for b in browsers))
        taken = itertools.count()
        meter.start()
        started = time.perf_counter()
        deadline = started + seconds

        async def browse(b: User) -> None:
            while time.perf_counter() < deadline and next(taken) < requests:
                t0 = time.perf_counter()
                wrong = await b.request()
                latencies.append((time.perf_counter() - t0) * 1000)
                if wrong is not None:
                    failures.append(f"{b.name} request {b.sent}: {wrong}"[:300])

        await asyncio.gather(*(browse(b) for b in browsers))
        took = time.perf_counter() - started
        meter.stop()
    finally:
        await asyncio.gather(*(b.aclose() for b in browsers), return_exceptions=True)
    return len(latencies), latencies, took, failures, [b.instances for b in browsers]


# ---------------------------------------------------------------------- CPU


# ---------------------------------------------------------------------- the lab


async def delete_matching(client: Redis, pattern: str) -> int:
    """UNLINK every key matching ``pattern`` (SCAN, bounded)."""
    deleted, cursor = 0, 0
    for _ in range(100_000):
        cursor, keys = await client.scan(cursor, match=pattern, count=1000)
        if keys:
            deleted += int(await client.unlink(*keys))
        if cursor == 0:
            break
    return deleted


def _pid(member: Member) -> Callable[[], list[int]]:
    return lambda: [member.pid]


class Lab:
    """What the benchmark starts on the cluster, and stops (by PID) in :meth:`close`."""

    def __init__(self, info: ClusterInfo, args: argparse.Namespace) -> None:
        self.info = info
        self.args = args
        targets = {t.id: t for t in info.redis_targets()}
        self.store_node, self.control_node = info.masters[0], info.masters[-1]
        self.store_target: RedisTarget = targets[self.store_node.name]
        self.control_target = targets[self.control_node.name]
        self.store = redis_client(self.store_target)
        self.control = redis_client(self.control_target)
        self.run_id = f"bench-sessions-{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"
        names = ["redis", "local", *(["container"] if args.container else []), "ceiling"]
        self.sides = {name: Side(name) for name in names}
        self.services = ServiceSet(
            self.run_id, self.control_target.url, time.monotonic(), control=self.control
        )
        self._record = RunRecord(self.control, self.run_id)
        self._heartbeat: asyncio.Task[None] | None = None
        self.groups: dict[str, Callable[[], list[int]]] = {
            CLIENT: lambda: [os.getpid()],
            "app instances": lambda: [],  # the side's own, set per round
            "haproxy": lambda: [],
            f"{self.store_node.name} (the sessions)": _pid(self.store_node),
            **{
                f"{m.name} (its replica)": _pid(m)
                for m in info.members
                if m.kind == "redis" and m.master == self.store_node.name
            },
            f"{self.control_node.name} (control: heartbeats)": _pid(self.control_node),
        }

    @property
    def namespace(self) -> str:
        return session_namespace(self.run_id)

    async def start(self) -> None:
        # the instances stop by themselves unless their run is "running" with a fresh heartbeat
        await self._record.create("session", {"bench": "sessions"}, [], "bench/sessions.py")
        self._heartbeat = asyncio.create_task(self._record.heartbeat(lambda: {}, asyncio.Event()))
        for side in self.sides.values():
            store = "local" if side.name == "ceiling" else side.name
            args = ["--store", store, "--idle-s", str(IDLE_S)]
            if store in ("redis", "container"):
                args += ["--redis", self.store_target.url]
            count = 1 if side.name == "ceiling" else INSTANCES
            side.services = list(
                await asyncio.gather(
                    *(
                        self.services.start(f"{side.name}-{i + 1}", "app-instance", MODULE, args)
                        for i in range(count)
                    )
                )
            )
            if side.name != "ceiling":
                side.balancer = Balancer(
                    self.services.folder / f"haproxy-{side.name}",
                    free_port(),
                    [Backend(s.name, "127.0.0.1", s.port) for s in side.services],
                    sticky=side.name == "local",
                    owner=self.run_id,
                )
                await side.balancer.start()
        await self._all_up()

    async def _all_up(self) -> None:
        """Every HAProxy sees each of its instances UP (its first checks passed)."""
        deadline = time.monotonic() + 10
        for side in self.sides.values():
            while side.balancer is not None:
                servers = await side.balancer.servers()
                if len(servers) == len(side.services) and all(s.status == "UP" for s in servers):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"haproxy ({side.name}) does not see every instance up: {servers}")
                await asyncio.sleep(0.05)

    async def stop_services(self) -> None:
        for side in self.sides.values():  # SIGTERM by PID (process group), SIGKILL what overstays
            if side.balancer is not None:
                with contextlib.suppress(Exception):
                    await side.balancer.stop()
        with contextlib.suppress(Exception):
            await self.services.stop_all(timeout=10)

    async def close(self) -> None:
        await self.stop_services()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._record.finish("done", None), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delete_matching(self.store, f"{self.namespace}:*"), 30)
        await self.store.aclose()
        await self.control.aclose()

    async def round(self, side: Side, n: int) -> float:
        """One round of load on a side, checked; its requests/s."""
        args = self.args
        pids: dict[str, Callable[[], list[int]]] = {
            **self.groups,
            "app instances": lambda: [s.pid for s in side.services if s.pid],
            "haproxy": lambda: [side.balancer.pid] if side.balancer and side.balancer.pid else [],
        }
        meter = Meter(pids)
        sent, latencies, took, failures, met = await drive(
            side.address, f"{side.name}-r{n}-", args.requests, args.seconds, args.users, meter
        )
        if failures:
            raise BenchError(f"{side.label}: {len(failures)} of {sent} requests failed: {failures[:3]}")
        if not sent:
            raise BenchError(f"{side.label}: no request was sent within {args.seconds} s")
        every = {s.name for s in side.services}
        seen: set[str] = set().union(*met)
        # round robin: the requests of a user go to whichever instance is next, so a user
        # meets several (with every user's requests interleaved, not always all three), and
        # the users together meet every instance; sticky, or straight to one: one each
        if side.round_robin:
            wrong = seen != every or any(len(m) < 2 for m in met)
        else:
            wrong = any(len(m) != 1 for m in met)
        if wrong:
            raise BenchError(
                f"{side.label}: users were served by {sorted(len(m) for m in met)} instances each "
                f"({', '.join(sorted(seen))}; the side has {', '.join(sorted(every))})"
            )
        side.served += [len(m) for m in met]
        side.rounds.append(Round(count=sent, seconds=took, cpu=meter.cpu, latencies_ms=latencies))
        return side.rounds[-1].rate


@dataclass
class Load:
    sides: dict[str, Side]
    ratios: list[float]
    """redis / local, per round."""
    to_ceiling: dict[str, list[float]]
    """Each store / the ceiling, per round."""
    store_node: str


async def load(lab: Lab, args: argparse.Namespace) -> Load:
    sides = lab.sides
    saved = args.requests
    args.requests = max(200, saved // 10)  # warm up (not counted): connections, every path once
    try:
        for side in sides.values():
            await lab.round(side, 0)
            side.rounds.clear()
            side.served.clear()
    finally:
        args.requests = saved
    ratios: list[float] = []
    to_ceiling: dict[str, list[float]] = {name: [] for name in sides if name != "ceiling"}
    for n in range(1, args.rounds + 1):
        rates = {name: await lab.round(side, n) for name, side in sides.items()}
        ratios.append(rates["redis"] / rates["local"])
        for name in to_ceiling:
            to_ceiling[name].append(rates[name] / rates["ceiling"])
    return Load(sides, ratios, to_ceiling, lab.store_node.name)


# ---------------------------------------------------------------------- expiry


@dataclass
class Expiry:
    sessions: int
    idle_s: tuple[int, ...]
    raw_ms: list[float]
    """Redis's ``expired`` event for the shadow, after its TTL end."""
    viewer_ms: list[float]
    """The viewer shows the session expired, after its TTL end."""
    extra_ms: list[float]
    """The viewer after Redis's event, per session."""
    notify: str
    hz: int
    with_ttl: int
    """Keys with a TTL on the node once every session was written (the expiry cycle samples them)."""


async def expiry(lab: Lab, info: ClusterInfo, count: int) -> Expiry:
    store = SpringStore(lab.store, lab.run_id)
    flags = str(next(iter((await lab.store.config_get("notify-keyspace-events")).values()), ""))
    hz = int(str(next(iter((await lab.store.config_get("hz")).values()), 10)))
    if not ("A" in flags or "x" in flags) or "E" not in flags:
        raise BenchError(f"{lab.store_node.name} sends no expired events (notify-keyspace-events {flags!r})")
    obs = Observatory(info.redis_targets(), info.zk_targets(), postgres=info.pg_targets())
    bus = Bus(obs)
    raw = Redis(**lab.store_target.connection(), protocol=2)
    pubsub = raw.pubsub()
    ttl_end: dict[str, float] = {}  # session id -> wall clock ms
    shadows: dict[str, str] = {}  # shadow key -> session id
    wanted: set[str] = set()  # known before the write: the viewer may see it before PTTL answers
    raw_seen: dict[str, float] = {}
    live_seen: dict[str, float] = {}
    expired_seen: dict[str, float] = {}
    odd: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    done = asyncio.Event()

    def check_done() -> None:
        if len(expired_seen) >= count and len(raw_seen) >= count:
            done.set()

    async def listen_raw() -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            at = time.time() * 1000
            key = msg["data"].decode() if isinstance(msg["data"], bytes) else str(msg["data"])
            sid = shadows.get(key)
            if sid is not None:
                raw_seen.setdefault(sid, at)
                check_done()

    def look(delivery: Delivery, at: float) -> None:
        if isinstance(delivery, Snapshot):
            seen = [e for e in delivery.of("session") if isinstance(e, Session)]
        else:
            seen = [e.entity for e in delivery if isinstance(e, Upserted) and isinstance(e.entity, Session)]
        for s in seen:
            if s.session_id not in wanted:
                continue
            if s.state == "live" and s.session_id in expired_seen:
                odd.append(f"{s.session_id} live again after expired")
            elif s.state == "live":
                live_seen.setdefault(s.session_id, at)
            elif s.state == "expired":
                expired_seen.setdefault(s.session_id, at)
            else:
                odd.append(f"{s.session_id} {s.state}")
        check_done()

    viewer = bus.subscribe()

    async def listen_viewer() -> None:
        while True:
            delivery = await viewer.get()
            look(delivery, time.time() * 1000)

    await obs.start()
    try:
        missing = await obs.wait_synced(SYNC_TIMEOUT_S)
        if missing:
            raise BenchError(f"the collectors never synced: {missing}")
        await pubsub.subscribe(f"__keyevent@{lab.store_target.db}__:expired")
        tasks += [asyncio.create_task(listen_raw()), asyncio.create_task(listen_viewer())]
        for i in range(count):
            idle = EXPIRY_IDLE_S[i % len(EXPIRY_IDLE_S)]
            now = now_ms()
            data = SessionData(
                str(uuid.uuid4()), now, now, idle, {USER: f"bench-expiry-{i}", "servedBy": "bench"}
            )
            shadows[store.expires_key(data.id)] = data.id
            wanted.add(data.id)
            await store.save(data, set(data.attrs), new=True)
            t0 = time.time()
            pttl = await lab.store.pttl(store.expires_key(data.id))
            t1 = time.time()
            if pttl is None or pttl < 0:
                raise BenchError(f"{store.expires_key(data.id)} has no TTL right after the write ({pttl})")
            ttl_end[data.id] = (t0 + t1) / 2 * 1000 + pttl
            await asyncio.sleep(WRITE_SPREAD_S / count)
        keyspace: dict[str, Any] = await lab.store.info("keyspace")
        db = keyspace.get(f"db{lab.store_target.db}", {})
        with_ttl = int(db.get("expires", 0)) if isinstance(db, dict) else 0
        deadline = time.monotonic() + (max(ttl_end.values()) - time.time() * 1000) / 1000 + EXPIRY_WAIT_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.0, deadline - time.monotonic()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        viewer.close()
        await obs.stop()
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await raw.aclose()
    never_live = [s for s in ttl_end if s not in live_seen]
    never_expired = [s for s in ttl_end if s not in expired_seen]
    no_event = [s for s in ttl_end if s not in raw_seen]
    early = [s for s in expired_seen if s in live_seen and live_seen[s] > expired_seen[s]]
    if never_live or never_expired or no_event or odd or early:
        raise BenchError(
            f"of {count} sessions, the viewer never showed {len(never_live)} live and "
            f"{len(never_expired)} expired within {EXPIRY_WAIT_S:g} s of their TTL end "
            f"(e.g. {(never_live + never_expired)[:3]}); {len(no_event)} had no expired event; "
            f"{len(early)} showed expired before live; other states: {odd[:3]}"
        )
    return Expiry(
        count,
        EXPIRY_IDLE_S,
        [raw_seen[s] - ttl_end[s] for s in ttl_end],
        [expired_seen[s] - ttl_end[s] for s in ttl_end],
        [expired_seen[s] - raw_seen[s] for s in ttl_end],
        flags,
        hz,
        with_ttl,
    )


# ---------------------------------------------------------------------- the run


async def bench(info: ClusterInfo, args: argparse.Namespace) -> tuple[Load, Expiry]:
    lab = Lab(info, args)
    try:
        await lab.start()
        result = await load(lab, args)
        await lab.stop_services()  # part 2 on a quiet machine, and its sessions alone in the namespace
        await delete_matching(lab.store, f"{lab.namespace}:*")
        return result, await expiry(lab, info, args.sessions)
    finally:
        await lab.close()


# ---------------------------------------------------------------------- the report


def line(label: str, value: str) -> None:
    print(f"  {label:<70}{value}")


def spread(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):6.1f} ms  p99 {percentile(values, 99):6.1f} ms  "
        f"(min {min(values):6.1f}, max {max(values):6.1f})"
    )


def report(measured: tuple[Load, Expiry], args: argparse.Namespace) -> None:
    load, exp = measured
    sides = load.sides
    ratio = statistics.median(load.ratios)
    print(
        f"requests/s through HAProxy over {INSTANCES} app instances per store, {args.users} concurrent "
        "users (each its own cookies; logs in once per round, then GET /browse and POST /cart in turn);"
    )
    print(
        f"median of {len(load.ratios)} alternating rounds ({', '.join(sides)}, ...) of <= {args.requests} "
        f"requests / <= {args.seconds:g} s each; latency per request at the client:"
    )
    for side in sides.values():
        line(side.label, rate_line(side))
    line(
        f"ratio redis / local (goal >= {GOAL})",
        f"{ratio:7.2f}x  (rounds {min(load.ratios):.2f}-{max(load.ratios):.2f})  "
        + ("PASS" if ratio >= GOAL else "BELOW THE GOAL"),
    )
    for name, per_round in load.to_ceiling.items():
        line(
            f"ratio {name} / the raw ceiling",
            f"{statistics.median(per_round):7.2f}x  (rounds {min(per_round):.2f}-{max(per_round):.2f})",
        )
    for name, side in sides.items():
        line(f"  per round: {name}", " ".join(f"{x:,.0f}" for x in side.rates))
    line("  per round: redis / local", " ".join(f"{x:.2f}" for x in load.ratios))
    line(
        "instances that served each user, per store",
        ", ".join(f"{n} {'/'.join(str(x) for x in sorted(set(s.served)))}" for n, s in sides.items()),
    )
    print("CPU per request, ms (all of it shares this machine's cores):")
    cpu = {name: side.cpu_ms_per_op() for name, side in sides.items()}
    width = max(len(n) for n in sides) + 2
    line("", "".join(f"{n:>{width}}" for n in sides))
    for group in cpu["redis"]:
        line(group, "".join(f"{c.get(group, 0.0):>{width}.3f}" for c in cpu.values()))
    line("the whole machine", "".join(f"{sum(c.values()):>{width}.3f}" for c in cpu.values()))
    server = {n: sum(v for g, v in c.items() if g not in (CLIENT, ELSEWHERE)) for n, c in cpu.items()}
    line(
        "the servers alone (instances, HAProxy, Redis)",
        "".join(f"{x:>{width}.3f}" for x in server.values())
        + f"   local / redis {server['local'] / server['redis']:.2f}",
    )
    print(
        "  (the client shares the cores: were it on another machine, the CPU-bound rate ratio "
        "redis / local would be about the servers' local / redis)"
    )
    print(
        f"session expiry on {load.store_node} (hz {exp.hz}, notify-keyspace-events {exp.notify!r}): "
        f"{exp.sessions} Spring sessions written over {WRITE_SPREAD_S:g} s, idle "
        f"{'/'.join(str(s) for s in exp.idle_s)} s, never touched again; after each one's TTL end:"
    )
    print(
        f"  ({exp.with_ttl} keys with a TTL on {load.store_node}, the sessions' shadows and hashes (idle + "
        f"{GRACE_S} s); every {1000 / exp.hz:g} ms Redis's expiry cycle samples 20 keys with a TTL, "
        "and samples again only if more than 1 in 10 of them had expired)"
    )
    line("raw ceiling: Redis's expired event for the shadow key", spread(exp.raw_ms))
    line("the viewer (Observatory + Bus) shows the session expired", spread(exp.viewer_ms))
    line("the viewer's extra cost on top of Redis's event", spread(exp.extra_ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (well under a minute)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of each store (10; quick: 3)")
    parser.add_argument("--requests", type=int, help="at most this many per round (3000; quick: 800)")
    parser.add_argument("--seconds", type=float, help="at most this long per round (8; quick: 3)")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (16)")
    parser.add_argument("--sessions", type=int, help="sessions whose expiry is timed (100; quick: 30)")
    parser.add_argument("--container", action="store_true", help="store=container too")
    args = parser.parse_args()
    rounds, requests, seconds, sessions = (3, 800, 3.0, 30) if args.quick else (10, 3000, 8.0, 100)
    args.rounds = args.rounds or rounds
    args.requests = args.requests or requests
    args.seconds = args.seconds or seconds
    args.sessions = args.sessions or sessions
    return on_own_cluster(bench, report, args, (BenchError,))


if __name__ == "__main__":
    sys.exit(main())
