"""``ordering``: each order's events, applied in order, across several workers.

The seed's second section. Producers emit every order's events — ``created``
(seq 1), ``paid`` (2), ``shipped`` (3), ``done`` (4) — each order's in sequence,
several orders interleaved, several producers at once. Worker processes
(:mod:`scenarios.ordering.worker`) each consume their own queue, a Redis Stream
with a consumer group, and apply events to the order's state in Redis. The
router (:mod:`scenarios.ordering.router`) decides which queue an event goes to:

- ``route=round-robin`` (naive): any worker. Two events of one order sit in two
  queues and two workers apply them at once: the later one often wins the race;
- ``route=consistent-hash``: the order's owner on Dubbo's hash ring (160 virtual
  nodes per worker): one queue, one consumer, one event after the other;
- ``route=zk-seq``: any worker, which applies an event under the order's
  ZooKeeper lock only if its seq is the next one, and requeues it otherwise.

Faults:

- ``add-worker`` / ``remove-worker``: the ring changes mid-run. The share of
  orders that moved is measured (and over 10,000 keys, against 1/(n+1)); a
  moved order's events already queued at the old owner and the new ones at the
  new owner sit in two queues for a while: a reorder if the new owner is faster.
  ``handoff=drain`` closes that window;
- ``retry-reorder``: a producer's send of seq k is lost; it sends k+1, then
  retries k — the queue holds k+1 before k;
- ``crash-before-ack``: the worker that gets the next event is SIGKILLed after
  applying it, before its ``XACK``; its next incarnation claims the pending entry
  (``XAUTOCLAIM``) and gets it again: applied twice unless ``dedup=on``;
- ``kill-worker``: a worker is SIGKILLed at any point, and restarted
  ``down_ms`` later; its queue waits for it meanwhile.

Invariant (:mod:`scenarios.ordering.checker`): per order, events applied in
sequence order, none twice, none lost — judged from every order's log as the
store holds it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER, Op, Verdict
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.scenario import Scenario
from scenarios.kit.zk_lock import lock_path
from scenarios.ordering import checker
from scenarios.ordering.orders import read_back, watch
from scenarios.ordering.router import Router
from scenarios.ordering.worker import EVENTS, ROUTES

ACTOR_FAULTS = ("retry-reorder", "crash-before-ack")
NEMESIS_FAULTS = ("add-worker", "remove-worker", "kill-worker")
MAX_WORKERS = 8

SPEC = ScenarioSpec(
    name="ordering",
    title="Per-order sequence across workers",
    summary="Producers emit each order's events (created, paid, shipped, done) to worker processes "
    "through a router: round-robin, Dubbo's consistent-hash ring (one stream per worker), or any "
    "worker behind a ZooKeeper lock and a sequence gate; every order's events must be applied in order.",
    invariant=checker.INVARIANT,
    params=(
        Param("route", "consistent-hash", "how events find a worker", choices=ROUTES),
        Param("workers", "3", "worker processes at the start", minimum=1, maximum=MAX_WORKERS - 1),
        Param("orders", "16", "orders, 4 events each", minimum=1, maximum=500),
        Param(
            "producers", "2", "producers emitting them (orders are dealt round-robin)", minimum=1, maximum=8
        ),
        Param(
            "vnodes",
            "160",
            "virtual nodes per worker on the ring (Dubbo's hash.nodes)",
            minimum=4,
            maximum=1000,
        ),
        Param(
            "dedup",
            "on",
            "an applied mark per event, set with its effect: a redelivery is skipped",
            choices=("on", "off"),
        ),
        Param(
            "handoff",
            "immediate",
            "when the ring changes: switch at once (Dubbo), or drain the old owner first",
            choices=("immediate", "drain"),
        ),
        Param(
            "window",
            "2",
            "orders a producer has under way at once (their events interleave)",
            minimum=1,
            maximum=50,
        ),
        Param("gap_ms", "25", "a producer's pause between two events", minimum=0, maximum=5000),
        Param("work_ms", "40", "a worker's work per event", minimum=0, maximum=5000),
        Param("jitter_ms", "80", "up to this much more work per event, at random", minimum=0, maximum=5000),
        Param(
            "fault_at", "20", "which event emitted a fault given at start strikes", minimum=1, maximum=2000
        ),
        Param(
            "retry_ms",
            "150",
            "retry-reorder: how long the producer waits to retry",
            minimum=1,
            maximum=10_000,
        ),
        Param("down_ms", "1500", "kill-worker: how long the worker stays dead", minimum=0, maximum=30_000),
        Param(
            "drain_ms",
            "20000",
            "how long the queues may take to empty after the last event",
            minimum=500,
            maximum=300_000,
        ),
        Param("seed", "1", "the producers' and workers' random choices", minimum=0, maximum=1_000_000),
    ),
    faults=(
        FaultSpec("add-worker", "a worker joins the ring mid-run: some orders move to it"),
        FaultSpec("remove-worker", "a worker leaves the ring mid-run, drains its queue and stops"),
        FaultSpec("retry-reorder", "a send of seq k is lost: k+1 goes first, then k is retried"),
        FaultSpec("crash-before-ack", "the worker is SIGKILLed after applying, before XACK: redelivered"),
        FaultSpec("kill-worker", "a worker is SIGKILLed at any point and restarted down_ms later"),
    ),
    show="the ring (virtual nodes, orders, moves), each worker's queue depth and pending entries, "
    "each order's applied sequence, a lane per producer and worker",
    sources=(
        "the seed: route an order's requests to one instance and queue by consistent hashing, "
        "or a ZooKeeper lock and the order's seq",
        "Apache Dubbo ConsistentHashLoadBalance (160 virtual nodes, 4 points per MD5 digest)",
        "Redis Streams: consumer groups, XAUTOCLAIM; Kafka: retries reorder with max.in.flight > 1",
    ),
)


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    return checker.check(ops)


# --------------------------------------------------------------------------- the run


class _Run:
    """One run's actors, router and store."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.node = ctx.env.masters[0]
        self.store: Redis = ctx.client(self.node)
        self.route = ctx.choice("route")
        self.orders = [f"order-{i + 1}" for i in range(ctx.number("orders"))]
        self.workers = [f"worker-{i + 1}" for i in range(ctx.number("workers"))]
        self.producers = [f"producer-{i + 1}" for i in range(ctx.number("producers"))]
        self.router = Router(
            ctx.run_id,
            self.route,
            list(self.workers),
            ctx.number("vnodes"),
            self.orders,
            ctx.choice("handoff"),
        )
        self.http = ctx.closing(Http())
        self.plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=ACTOR_FAULTS)
        self.emitted: dict[str, int] = {}
        self.hosts = ""
        self.lock = asyncio.Lock()
        """Held while the ring changes: one change at a time."""
        self.actions: list[asyncio.Task[None]] = []
        """The nemesis's actions under way: they finish even when the producers are done."""

    def queue(self, worker: str) -> str:
        return coordscope.worker_queue_key(self.ctx.run_id, worker)

    def worker_args(self) -> list[str]:
        ctx = self.ctx
        return [
            "--route", self.route, "--redis", ctx.env.target(self.node).url, "--zk", self.hosts,
            "--dedup", ctx.choice("dedup"), "--work-ms", str(ctx.number("work_ms")),
            "--jitter-ms", str(ctx.number("jitter_ms")), "--seed", str(ctx.number("seed")),
        ]  # fmt: skip

    async def start_worker(self, name: str) -> None:
        with contextlib.suppress(redis_errors.ResponseError):  # BUSYGROUP: it is there already
            await self.store.xgroup_create(self.queue(name), coordscope.WORKER_GROUP, id="$", mkstream=True)
        await self.ctx.services.start(
            name, "ordering-worker", "scenarios.ordering.worker", self.worker_args(), restart=True
        )

    async def publish(self, why: str, reshaped: bool = False) -> None:
        """Write the ring to the store (and say so: with the orders it moved, if it changed)."""
        await self.router.publish(self.store)
        change = self.router.change
        data: dict[str, Any] = {"version": self.router.version, "workers": self.router.workers}
        if change is not None and reshaped:
            data |= {
                "moved": [[m.key, m.before, m.after] for m in change.moves],
                "share": change.share,
                "sample_share": change.sample_share,
                "theory": change.theory,
            }
        self.ctx.record(RUNNER, "info", "ring", key=self.router.key, note=why, data=data)

    # ------------------------------------------------------------------ producers

    async def produce(self, name: str, orders: list[str]) -> None:
        ctx = self.ctx
        rng = random.Random(f"{ctx.number('seed')}:{name}")
        todo = schedule(orders, ctx.number("window"), rng)
        while todo and not ctx.stopping.is_set():
            order, seq = todo.pop(0)
            self.plan.step()
            fault = self.plan.take()
            if fault == "retry-reorder":
                after = next((i for i, (o, s) in enumerate(todo) if o == order and s == seq + 1), None)
                if after is None:  # the order's last event: strike the next one instead
                    self.plan.armed.append(fault)
                else:
                    todo.pop(after)
                    await self.retry_reorder(name, order, seq)
                    continue
            await self.emit(name, order, seq, armed=fault == "crash-before-ack")
            await asyncio.sleep(ctx.number("gap_ms") / 1000)

    async def emit(self, producer: str, order: str, seq: int, armed: bool = False, note: str = "") -> None:
        async with self.lock:  # never while the ring changes
            worker = await self.router.route_of(order, seq, self.store)
        if armed:
            await self.arm_crash(worker, order, seq)
        event = EVENTS[seq - 1]
        raw = await self.store.xadd(
            self.queue(worker), {"order": order, "seq": seq, "event": event, "producer": producer}
        )
        entry = raw.decode() if isinstance(raw, bytes) else str(raw)
        self.emitted[order] = max(self.emitted.get(order, 0), seq)
        self.ctx.record(
            producer, "ok", "emit", key=order, value=str(seq),
            note=f"{order} {event} (seq {seq}) -> {worker}" + (f" {note}" if note else ""),
            data={"seq": seq, "worker": worker, "entry": entry, "tick": "emit"},
        )  # fmt: skip

    async def retry_reorder(self, producer: str, order: str, seq: int) -> None:
        ctx = self.ctx
        retry_ms = ctx.number("retry_ms")
        ctx.record(
            NEMESIS,
            "info",
            "fault",
            value="retry-reorder",
            note=f"{producer}'s send of {order} seq {seq} is lost",
        )
        ctx.record(
            producer, "info", "emit", key=order, value=str(seq),
            note=f"{order} {EVENTS[seq - 1]} (seq {seq}): no ack, retried in {retry_ms} ms",
            data={"tick": "timeout"},
        )  # fmt: skip
        await self.emit(producer, order, seq + 1, note=f"(sent while seq {seq} waits for its retry)")
        await asyncio.sleep(retry_ms / 1000)
        await self.emit(producer, order, seq, note="(the retry)")
        ctx.record(NEMESIS, "info", "heal", value="retry-reorder", note=f"{order} seq {seq} retried")

    async def arm_crash(self, worker: str, order: str, seq: int) -> None:
        ctx = self.ctx
        ctx.record(
            NEMESIS, "info", "fault", value="crash-before-ack",
            note=f"{worker} dies after applying {order} seq {seq}, before XACK",
        )  # fmt: skip
        service = ctx.services.get(worker)
        await self.http.post(service, "/_arm", {"crash": "before-ack", "order": order, "seq": seq}, 5)

    # ------------------------------------------------------------------ the nemesis

    async def nemesis(self, fault: str) -> None:
        """Strike ``fault`` each time it is due (given at start, or injected live)."""
        event = self.plan.event(fault)
        while True:
            await event.wait()
            event.clear()
            self.actions.append(asyncio.create_task(self.strike(fault)))

    async def strike(self, fault: str) -> None:
        try:
            await getattr(self, fault.replace("-", "_"))()
        except ScenarioError as exc:
            self.ctx.record(NEMESIS, "info", "heal", value=fault, note=f"not done: {exc}")

    async def add_worker(self) -> None:
        ctx = self.ctx
        if len(self.router.workers) + len(self.router.leaving) >= MAX_WORKERS:
            raise ScenarioError(f"{MAX_WORKERS} workers at most")
        name = f"worker-{len(ctx.services.services) + 1}"  # the run's processes are its workers
        ctx.record(NEMESIS, "info", "fault", value="add-worker", note=f"{name} joins")
        await ctx.set_actors([*ctx.actors[:-1], name, ctx.actors[-1]])
        await self.start_worker(name)
        async with self.lock:
            change = self.router.reshape([*self.router.workers, name], f"+{name}", ctx.history.t_ms())
            await self.publish(change.summary(), reshaped=True)
        ctx.record(NEMESIS, "info", "heal", value="add-worker", note=change.summary())

    async def remove_worker(self) -> None:
        ctx = self.ctx
        if len(self.router.workers) < 2:
            raise ScenarioError("the last worker cannot leave")
        name = self.router.workers[-1]
        ctx.record(NEMESIS, "info", "fault", value="remove-worker", note=f"{name} leaves the ring")
        async with self.lock:
            change = self.router.reshape(
                [w for w in self.router.workers if w != name], f"-{name}", ctx.history.t_ms()
            )
            await self.publish(change.summary(), reshaped=True)
        await self.drained([name], ctx.number("drain_ms") / 1000)
        await ctx.services.stop(name)
        self.router.drained(name)
        await self.publish(f"{name} drained its queue and stopped")
        ctx.record(NEMESIS, "info", "heal", value="remove-worker", note=f"{name} stopped, its queue empty")

    async def kill_worker(self) -> None:
        ctx = self.ctx
        name = max(
            self.router.workers, key=lambda w: sum(1 for o in self.orders if self.router.owner(o) == w)
        )
        ctx.record(NEMESIS, "info", "fault", value="kill-worker", note=f"SIGKILL {name}")
        await ctx.services.kill(name, "kill-worker")
        try:
            await asyncio.sleep(ctx.number("down_ms") / 1000)
        finally:
            await ctx.services.restart(name)
        ctx.record(
            NEMESIS, "info", "heal", value="kill-worker", note=f"{name} restarted: it claims what was pending"
        )

    # ------------------------------------------------------------------ draining

    async def drained(self, workers: list[str], timeout_s: float) -> bool:
        """Wait until these workers' queues have nothing undelivered or pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            busy = False
            for w in workers:
                try:
                    groups = await self.store.xinfo_groups(self.queue(w))
                except redis_errors.ResponseError:
                    continue
                for g in groups:
                    if int(g.get("pending", 0)) or (g.get("lag") or 0):
                        busy = True
            if not busy:
                return True
            await asyncio.sleep(0.1)
        return False


def schedule(orders: list[str], window: int, rng: random.Random) -> list[tuple[str, int]]:
    """A producer's events, (order, seq) in the order sent: each order's in sequence,
    ``window`` orders under way at once, the next event drawn among them at random."""
    waiting, active, out = list(orders), list[str](), list[tuple[str, int]]()
    nexts: dict[str, int] = {}
    while waiting or active:
        while waiting and len(active) < window:
            order = waiting.pop(0)
            active.append(order)
            nexts[order] = 1
        order = rng.choice(active)
        out.append((order, nexts[order]))
        nexts[order] += 1
        if nexts[order] > len(EVENTS):
            active.remove(order)
    return out


async def run(ctx: RunContext) -> None:
    r = _Run(ctx)
    if r.route == "zk-seq":
        if not ctx.env.zookeeper:
            raise ScenarioError("route=zk-seq takes a lock per order in ZooKeeper, and none is configured")
        r.hosts = ctx.env.zookeeper[0].hosts
        ctx.cleanup_znode(r.hosts, lock_path(ctx.run_id))  # every order's lock, under the run
    everyone = [f"worker-{i + 1}" for i in range(MAX_WORKERS)]
    ctx.cleanup(
        r.node,
        r.router.key,
        *(r.queue(w) for w in everyone),
        *(coordscope.order_key(ctx.run_id, o) for o in r.orders),
        *(coordscope.event_mark_key(ctx.run_id, o, s) for o in r.orders for s in range(1, len(EVENTS) + 1)),
    )
    await ctx.set_actors([*r.producers, *r.workers, NEMESIS])
    for w in r.workers:
        await r.start_worker(w)
    await r.publish(
        f"{r.route}: {len(r.workers)} workers"
        + (f", {ctx.number('vnodes')} virtual nodes each" if r.router.ring else "")
    )
    ctx.record(
        RUNNER, "info", "start",
        note=f"route={r.route} dedup={ctx.choice('dedup')}: {len(r.orders)} orders from "
        f"{len(r.producers)} producers to {len(r.workers)} workers; queues and orders on {r.node}",
    )  # fmt: skip
    deal = [r.orders[i :: len(r.producers)] for i in range(len(r.producers))]
    await with_helpers(
        ctx,
        r.plan.arm,
        [r.produce(p, mine) for p, mine in zip(r.producers, deal, strict=True)],
        watch(ctx, r.store, r.router, r.orders, r.lock),
        *(r.nemesis(f) for f in NEMESIS_FAULTS),
    )
    await asyncio.gather(*r.actions)
    ctx.record(RUNNER, "info", "drain", note="every event emitted: the workers empty their queues")
    everyone_now = [*r.router.workers, *r.router.leaving]
    if not await r.drained(everyone_now, ctx.number("drain_ms") / 1000):
        ctx.record(
            RUNNER, "info", "drain", note=f"the queues did not empty within {ctx.number('drain_ms')} ms"
        )
    await ctx.services.stop_all()
    await read_back(ctx, r.store, r.router, r.orders, r.emitted)


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
