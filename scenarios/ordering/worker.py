"""An ``ordering`` worker: a process of its own that consumes its queue and applies each
order's events.

Its queue is a Redis Stream (``coordscope:ordering:{<run>}:q:<worker>``) with one
consumer group, ``workers``; the worker reads it with ``XREADGROUP`` and
acknowledges an entry (``XACK``) only after its event is applied, so an entry
whose worker died before the ack stays *pending* and is delivered again.

Applying an event is one Lua script on the order's hash (:data:`APPLY`, which
takes a whole batch read at once when nothing is narrated, armed or gated): it
appends ``<seq> <worker> <t_ms> <entry>`` to the order's log and sets its state.
With ``dedup=on`` the same script first looks for the event's applied mark
(``coordscope:mark:{<run>}:<order>#<seq>``, an idempotency mark in the
COMPLETED state) and sets it with the effect — one atomic step, so a
redelivered event is recognised and skipped, never applied twice; without the
mark the effect and the memory of it could be split by a crash.

Routes (``--route``):

- ``round-robin`` and ``consistent-hash``: apply what comes, in the order it
  comes (which is what the router decides: any worker, or the order's owner);
- ``zk-seq``: take the order's ZooKeeper lock (``/coordscope/locks/<run>/<order>``),
  read the order's last applied seq, and apply the event only
  if it is the next one; an event already applied is acknowledged and dropped;
  an early one is put back on the next worker's queue (``XADD`` then ``XACK``)
  and the lock released. The seq lives with the order, in Redis, never in a
  ZooKeeper sequential node (those count every child change: they have gaps).

Recovery: each start of the process is a new consumer, ``<worker>.<incarnation>``.
It first claims, with ``XAUTOCLAIM``, what its dead predecessors left pending,
applies those (in id order, before anything new), then deletes the consumers
left with nothing pending. The run arms a crash right after an apply and
before its ack with ``POST /_arm`` (the ``crash-before-ack`` fault).

Error handling
--------------
A Redis or ZooKeeper error while handling an entry leaves it unacknowledged
(it stays pending and is claimed again by the next incarnation); the worker
narrates the error and reads on after a short pause. A malformed entry (not
written by our producers) is acknowledged and narrated, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.kazoo_bridge import KazooBridge
from collectors.layouts import coordscope
from collectors.layouts.coordscope import parse_ring
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.process import ServiceRuntime, parser
from scenarios.kit.zk_lock import ZkLock

ROUTES = ("round-robin", "consistent-hash", "zk-seq")
BATCH = 64
ZK_SESSION_S = 3.0
"""Short: the order locks of a worker killed while it held them free this soon."""
BLOCK_MS = 100
EVENTS = ("created", "paid", "shipped", "done")

# Events in turn (one, or a whole batch read at once), each on its order's hash:
# KEYS - per event, the order's hash, then (only with dedup=on) the event's applied mark
# ARGV[1] - the consumer applying them, ARGV[2] - t_ms on the run's axis, ARGV[3] - the marks' TTL
# in ms, then per event: seq, the stream entry's id, the event's name
# Returns per event two items: 'applied', '' | 'duplicate', the consumer that applied it before
APPLY = """
local events = (#ARGV - 3) / 3
local per = #KEYS / events
local out = {}
for i = 0, events - 1 do
    local order, mark = KEYS[i * per + 1], nil
    if per == 2 then mark = KEYS[i * per + 2] end
    local seq, entry, name = ARGV[4 + i * 3], ARGV[5 + i * 3], ARGV[6 + i * 3]
    local by = mark and redis.call('HGET', mark, 'owner')
    if by then
        out[#out + 1] = 'duplicate'
        out[#out + 1] = by
    else
        local line = seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. entry
        local log = redis.call('HGET', order, 'log')
        redis.call('HSET', order, 'log', log and (log .. ';' .. line) or line,
                   'state', name, 'seq', seq, 'by', ARGV[1])
        if mark then
            redis.call('HSET', mark, 'state', 'COMPLETED', 'owner', ARGV[1], 'fingerprint', seq,
                       'code', 'applied', 'body', entry)
            redis.call('PEXPIRE', mark, ARGV[3])
        end
        out[#out + 1] = 'applied'
        out[#out + 1] = ''
    end
end
return out
"""


class Worker:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.run_id = rt.run_id
        self.route: str = args.route
        self.dedup = args.dedup == "on"
        self.narrate = args.narrate == "on"
        self.work_ms: int = args.work_ms
        self.jitter_ms: int = args.jitter_ms
        self.mark_ttl_ms: int = args.mark_ttl_ms
        self.consumer = f"{rt.name}.{args.incarnation}"
        self.queue = coordscope.worker_queue_key(self.run_id, rt.name)
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.random = random.Random(f"{args.seed}:{self.consumer}")
        self.armed: dict[str, Any] = {}
        self.hosts: str = args.zk
        self.zk: KazooClient | None = None
        self.bridge: KazooBridge | None = None
        self.locks: dict[str, ZkLock] = {}
        self.task: asyncio.Task[None] | None = None
        self.applied = self.duplicates = self.requeued = 0

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        if self.route == "zk-seq":
            self.zk = KazooClient(
                hosts=self.hosts, timeout=10, connection_retry={"max_tries": -1, "delay": 0.05}
            )
            self.bridge = KazooBridge(asyncio.get_running_loop())
            await asyncio.to_thread(self.zk.start, 15)
        self.apply_sha = await self.redis.script_load(APPLY)
        self.task = asyncio.create_task(self.consume())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        for lock in self.locks.values():
            lock.close()
        if self.zk is not None:
            self.zk.state_listeners.clear()
            await asyncio.to_thread(self.zk.stop)
            await asyncio.to_thread(self.zk.close)
        await self.redis.aclose()

    async def record(self, kind: str, f: str, **kw: Any) -> None:
        if self.narrate:
            await self.rt.record(self.rt.name, kind, f, **kw)

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.armed = {k: body[k] for k in ("crash", "order", "seq") if k in body}
        return JSONResponse({"armed": self.armed})

    # ------------------------------------------------------------------ the loop

    async def consume(self) -> None:
        await self.claim_dead()
        while not self.rt.stopping.is_set():
            try:
                reply: Any = await self.redis.xreadgroup(
                    coordscope.WORKER_GROUP, self.consumer, {self.queue: ">"}, count=BATCH, block=BLOCK_MS
                )
                for _, entries in reply or ():  # RESP2 (scenarios' clients): [[stream, entries]]
                    await self.handle(entries)
            except (redis_errors.RedisError, OSError, KazooException, TimeoutError) as exc:
                await self.record("info", "error", note=f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.2)

    async def claim_dead(self) -> None:
        """Take over what earlier incarnations of this worker left pending (``XAUTOCLAIM``:
        they are other consumers of the group), apply it, then forget them."""
        start, claimed = "0-0", 0
        while True:
            reply = await self.redis.xautoclaim(
                self.queue, coordscope.WORKER_GROUP, self.consumer, 0, start_id=start, count=BATCH
            )
            start = reply[0]
            entries: list[Any] = [e for e in reply[1] if e is not None and e[1] is not None]
            if entries:
                claimed += len(entries)
                await self.record(
                    "info",
                    "claim",
                    note=f"XAUTOCLAIM: {len(entries)} pending entr(ies) of a dead consumer",
                    data={"tick": "claim", "entries": [text(e[0]) for e in entries][:20]},
                )
                await self.handle(entries)
            if text(start) == "0-0":
                break
        for consumer in await self.redis.xinfo_consumers(self.queue, coordscope.WORKER_GROUP):
            name = text(consumer.get("name", b""))
            if name != self.consumer and not int(consumer.get("pending", 0)):
                await self.redis.xgroup_delconsumer(self.queue, coordscope.WORKER_GROUP, name)

    async def handle(self, entries: list[Any]) -> None:
        fast = not self.narrate and not self.work_ms and not self.armed and self.route != "zk-seq"
        if fast:
            await self._batch(entries)
            return
        for entry_id, fields in entries:
            self.rt.served(f"{text(fields.get(b'order', b'?'))}#{text(fields.get(b'seq', b'?'))}")
            event = _event(fields)
            if event is None:
                await self.record("info", "malformed", note=f"entry {text(entry_id)} is not an event: acked")
                await self.redis.xack(self.queue, coordscope.WORKER_GROUP, entry_id)
                continue
            if self.route == "zk-seq":
                await self._gated(text(entry_id), entry_id, event)
            else:
                await self._apply_one(text(entry_id), entry_id, event)

    async def _batch(self, entries: list[Any]) -> None:
        """No narration, no work, nothing armed: the whole batch applied by one script call,
        in turn, and acknowledged, in one round trip (the ack runs after the script)."""
        events = [(text(i), e) for i, f in entries if (e := _event(f)) is not None]
        pipe = self.redis.pipeline(transaction=False)
        if events:
            pipe.evalsha(self.apply_sha, *self._apply_args(events))
        pipe.xack(self.queue, coordscope.WORKER_GROUP, *(i for i, _ in entries))
        replies = await pipe.execute()
        outcomes = [text(o) for o in (replies[0][::2] if events else [])]
        self.applied += outcomes.count("applied")
        self.duplicates += len(outcomes) - outcomes.count("applied")
        self.rt.served(f"{len(entries)} event(s)")

    def _apply_args(self, events: list[tuple[str, tuple[str, int, str]]]) -> list[Any]:
        """The script's arguments for these (entry id, (order, seq, name)) in turn."""
        keys: list[str] = []
        argv: list[Any] = [self.consumer, self.rt.narrator.t_ms(), self.mark_ttl_ms]
        for entry, (order, seq, name) in events:
            keys.append(coordscope.order_key(self.run_id, order))
            if self.dedup:
                keys.append(coordscope.event_mark_key(self.run_id, order, seq))
            argv += [seq, entry, name]
        return [len(keys), *keys, *argv]

    async def _work(self) -> None:
        ms = self.work_ms + (self.random.randint(0, self.jitter_ms) if self.jitter_ms else 0)
        if ms:
            await asyncio.sleep(ms / 1000)

    async def _apply(self, entry: str, order: str, seq: int, name: str) -> bool:
        """The event applied (True), or recognised by its mark as applied before (False)."""
        outcome, by = await self.redis.evalsha(
            self.apply_sha, *self._apply_args([(entry, (order, seq, name))])
        )
        span = {"span": entry, "seq": seq}
        if text(outcome) == "applied":
            self.applied += 1
            await self.record(
                "ok", "apply", key=order, value=str(seq), note=f"{order} {name} (seq {seq}), entry {entry}",
                data=span,
            )  # fmt: skip
            return True
        self.duplicates += 1
        await self.record(
            "ok", "apply", key=order, value=str(seq),
            note=f"{order} seq {seq} again: its mark says {text(by)} applied it; skipped",
            data={**span, "tick": "duplicate"},
        )  # fmt: skip
        return False

    async def _crash_point(self, order: str, seq: int) -> None:
        armed = self.armed
        if (
            armed.get("crash") == "before-ack"
            and (armed.get("order") in (None, order))
            and (armed.get("seq") in (None, seq))
        ):
            await self.rt.crash(order, f"SIGKILL after applying {order} seq {seq}, before XACK")

    async def _begin(self, entry: str, order: str, seq: int, name: str) -> None:
        """The worker's span for this event opens (it closes when the event is done with)."""
        await self.record(
            "invoke",
            "apply",
            key=order,
            value=str(seq),
            note=f"{order} {name} (seq {seq})",
            data={"span": entry},
        )

    async def _apply_one(self, entry: str, entry_id: Any, event: tuple[str, int, str]) -> None:
        order, seq, name = event
        await self._begin(entry, order, seq, name)
        await self._work()
        await self._apply(entry, order, seq, name)
        await self._crash_point(order, seq)
        await self.redis.xack(self.queue, coordscope.WORKER_GROUP, entry_id)

    # ------------------------------------------------------------------ zk-seq

    def _lock(self, order: str) -> ZkLock:
        assert self.zk is not None and self.bridge is not None
        if order not in self.locks:
            self.locks[order] = ZkLock(self.zk, self.bridge, f"{self.run_id}/{order}", self.consumer)
        return self.locks[order]

    async def _gated(self, entry: str, entry_id: Any, event: tuple[str, int, str]) -> None:
        """Under the order's ZooKeeper lock: apply only the next event in sequence."""
        order, seq, name = event
        lock = self._lock(order)
        await self._begin(entry, order, seq, name)
        await lock.acquire(timeout=30)
        try:
            raw = await self.redis.hget(coordscope.order_key(self.run_id, order), "seq")
            last = int(raw) if raw is not None and text(raw).isdigit() else 0
            if seq <= last:
                self.duplicates += 1
                await self.record(
                    "ok", "apply", key=order, value=str(seq),
                    note=f"{order} seq {seq} already applied (at {last}): dropped",
                    data={"span": entry, "tick": "duplicate"},
                )  # fmt: skip
            elif seq == last + 1:
                await self._work()
                await self._apply(entry, order, seq, name)
                await self._crash_point(order, seq)
            else:
                await self._requeue(entry, order, seq, name, last)
        finally:
            await lock.release()
        await self.redis.xack(self.queue, coordscope.WORKER_GROUP, entry_id)

    async def _requeue(self, entry: str, order: str, seq: int, name: str, last: int) -> None:
        """Not the next one: put it back, on the next worker's queue (any worker may take it)."""
        queues = await self._queues()
        mine = queues.index(self.queue) if self.queue in queues else -1
        target = queues[(mine + 1) % len(queues)] if queues else self.queue
        self.requeued += 1
        await asyncio.sleep(min(0.05, 0.005 * self.requeued**0.5))  # let the missing one arrive
        await self.redis.xadd(target, {"order": order, "seq": seq, "event": name, "requeued": entry})
        await self.record(
            "fail", "apply", key=order, value=str(seq),
            note=f"{order} seq {seq} early (next is {last + 1}): requeued on {target.rpartition(':')[2]}",
            data={"span": entry, "tick": "requeue"},
        )  # fmt: skip

    async def _queues(self) -> list[str]:
        """The ring's workers' streams, as its hash says now (read as the collectors read it)."""
        raw = await self.redis.hmget(coordscope.ring_key(self.run_id), ["queues", "workers"])
        fields = {name: text(value) for name, value in zip(("queues", "workers"), raw, strict=True) if value}
        ring = parse_ring(self.run_id, fields)
        return [ring.queues[w] for w in ring.workers if w in ring.queues]


def _event(fields: dict[bytes, bytes]) -> tuple[str, int, str] | None:
    """(order, seq, name) of an entry our producers wrote; None for anything else."""
    order = text(fields.get(b"order", b""))
    seq = text(fields.get(b"seq", b""))
    if not order or not seq.isdigit() or not 1 <= int(seq) <= 1000:
        return None
    return order, int(seq), text(fields.get(b"event", b"")) or "event"


async def main() -> None:
    p = parser("an ordering worker: consumes its own queue and applies each order's events")
    p.add_argument("--route", choices=ROUTES, required=True)
    p.add_argument("--redis", required=True, help="where the queues and the orders live (Redis URL)")
    p.add_argument("--zk", default="", help="ZooKeeper hosts (zk-seq)")
    p.add_argument("--dedup", choices=("on", "off"), default="on")
    p.add_argument("--work-ms", type=int, default=0)
    p.add_argument("--jitter-ms", type=int, default=0)
    p.add_argument("--mark-ttl-ms", type=int, default=600_000)
    p.add_argument("--seed", default="0")
    p.add_argument("--narrate", choices=("on", "off"), default="on")
    args = p.parse_args()
    runtime = ServiceRuntime(args)
    worker = Worker(runtime, args)
    await runtime.serve(
        [Route("/_arm", worker.arm, methods=["POST"])], on_start=worker.start, on_close=worker.close
    )


if __name__ == "__main__":
    asyncio.run(main())
