"""The notifier of ``txn-best-effort``: it tells the receiver of each payment, again and
again on a backoff ladder, until it hears ``success`` — or gives up.

As WeChat Pay and Alipay notify a merchant: a notification is sent at once, and while
the answer is anything but an HTTP 200 whose body is the literal ``success`` (the
connection refused, no answer within ``--timeout-ms``, a 500, another body) it is sent
again after the next rung of the ladder; after the last rung it is GAVE_UP and the
receiver has to find out by itself (it queries the payer: reconciliation).

Each notification is a hash, ``coordscope:notify:{<run>}:n:<id>``, with exactly the
fields :mod:`collectors.layouts.messaging` documents (``state``, ``attempt``,
``attempts``, ``next_at_ms``, ``ladder``, ``target``, ``last``, ``created_ms``,
``done_ms``), and it is scheduled in the ZSET ``coordscope:notify:{<run>}:due``,
scored by the time of its next attempt — the scheduler and, on the screens, the
countdown. Every change to a notification is one Lua script over its hash and the
ZSET, so the two never disagree:

- :data:`TAKE`: a queue entry becomes a NOTIFYING hash due now, and is acknowledged
  (``XACK``) in the same step: taken once, even when read again after a restart;
- :data:`CLAIM`: an attempt starts: ``attempt`` counts it, and its score moves a lease
  ahead (``--timeout-ms`` and a second) so it is not picked twice meanwhile — and is
  picked again if this process dies with it in flight;
- :data:`SETTLE`: its outcome: ACKED, GAVE_UP (``done_ms``, out of the ZSET), or the
  next attempt's time (``next_at_ms`` and its score).

The payload sent (id, amount, the payment's time) is the queue entry's: the stream
keeps it, and a notifier that starts reads the stream again to know every payload.

Narrated on lane ``notifier``: ``notify`` (an attempt that failed: "attempt 3/5:
refused, next in 1.2s"), ``acked``, ``gave-up``.

Error handling: a Redis error in a loop is narrated and the loop goes on after a
pause; an attempt whose outcome could not be written is picked again when its lease
ends (the receiver dedups).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import messaging
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.http import Http, Reply
from scenarios.kit.process import ServiceRuntime, parser, run

NOTIFIER = "notifier"
GROUP = "notifier"
BATCH = 64
PAGES = 200
"""At most this many pages of :data:`BATCH` read back from the stream when it starts."""
AT_ONCE = 64
"""Attempts in flight at most."""
LEASE_MS = 1000
"""An attempt's lease beyond its timeout (picked again after it, if its outcome never came)."""
SUCCESS = "success"

# A queue entry becomes a notification (once) and is acknowledged.
# KEYS[1] - the notification's hash, KEYS[2] - the due ZSET, KEYS[3] - the queue
# ARGV[1] - id, ARGV[2] - now (ms), ARGV[3] - attempts, ARGV[4] - the ladder, ARGV[5] - target,
# ARGV[6] - the consumer group, ARGV[7] - the entry's id, ARGV[8] - the first attempt's time (ms)
# Returns 1 when it made the notification, 0 when it was there already
TAKE = """
local made = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], 'state', 'NOTIFYING', 'attempt', '0', 'attempts', ARGV[3],
               'next_at_ms', ARGV[8], 'ladder', ARGV[4], 'target', ARGV[5], 'last', 'queued',
               'created_ms', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
    made = 1
end
redis.call('XACK', KEYS[3], ARGV[6], ARGV[7])
return made
"""

# An attempt starts, if the notification is NOTIFYING and due.
# KEYS[1] - the hash, KEYS[2] - the due ZSET
# ARGV[1] - id, ARGV[2] - now (ms), ARGV[3] - the lease's end (ms)
# Returns the attempt's number, or 0 when it is not due (taken meanwhile, or done)
CLAIM = """
if redis.call('HGET', KEYS[1], 'state') ~= 'NOTIFYING' then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 0
end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'last', 'attempt ' .. n .. ': sending')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return n
"""

# An attempt's outcome.
# KEYS[1] - the hash, KEYS[2] - the due ZSET
# ARGV[1] - id, ARGV[2] - ACKED | GAVE_UP | NOTIFYING (again at ARGV[6]), ARGV[3] - the attempt,
# ARGV[4] - last (the outcome in words), ARGV[5] - now (ms), ARGV[6] - the next attempt (ms)
# Returns 1, or 0 when the notification moved on meanwhile (this attempt's word is stale)
SETTLE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'NOTIFYING'
   or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[3] then
    return 0
end
if ARGV[2] == 'NOTIFYING' then
    redis.call('HSET', KEYS[1], 'last', ARGV[4], 'next_at_ms', ARGV[6])
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
else
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'last', ARGV[4], 'done_ms', ARGV[5])
    redis.call('HDEL', KEYS[1], 'next_at_ms')
    redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


def outcome(reply: Reply, timeout_ms: int) -> str:
    """An answer in words; ``success`` only for a 200 whose body is the literal ``success``."""
    if reply.status is None:
        return {"refused": "refused", "timeout": f"no answer within {timeout_ms} ms"}.get(
            reply.error, reply.error or "no answer"
        )
    body = str(reply.body.get("text", "")).strip() if set(reply.body) == {"text"} else ""
    if reply.status == 200 and body == SUCCESS:
        return SUCCESS
    said = body or str(reply.body.get("error") or reply.body)
    return f"{reply.status}: {said[:60]}" if said else str(reply.status)


def seconds(ms: int) -> str:
    return f"{ms / 1000:.1f}s" if ms >= 1000 else f"{ms} ms"


class Notifier:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        run_id = rt.run_id
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.ladder = [int(x) for x in str(args.ladder).split(",")]
        self.timeout_ms: int = args.timeout_ms
        self.queue = messaging.notify_queue_key(run_id)
        self.due = messaging.due_key(run_id)
        self.consumer = f"{rt.name}.{args.incarnation}"
        self.payloads: dict[str, dict[str, str]] = {}
        self.in_flight: set[str] = set()
        self.slots = asyncio.Semaphore(AT_ONCE)
        self.wake = asyncio.Event()
        self.http = Http(AT_ONCE)
        self.tasks: list[asyncio.Task[None]] = []
        self.counts = {"acked": 0, "gave up": 0, "retries": 0}
        # register_script: loaded again on NOSCRIPT (a Redis restarted meanwhile)
        self.take_script = self.redis.register_script(TAKE)
        self.claim_script = self.redis.register_script(CLAIM)
        self.settle_script = self.redis.register_script(SETTLE)

    async def start(self) -> None:
        with contextlib.suppress(redis_errors.ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
        await self.read_back()
        self.tasks = [asyncio.create_task(self.intake()), asyncio.create_task(self.schedule())]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
        await self.redis.aclose()

    def key(self, order: str) -> str:
        return messaging.notification_key(self.rt.run_id, order)

    def _detail(self) -> None:
        c = self.counts
        self.rt.detail = (
            f"{len(self.in_flight)} in flight; {c['acked']} acked, {c['gave up']} gave up, "
            f"{c['retries']} retries"
        )

    async def _error(self, where: str, exc: BaseException) -> None:
        self.rt.note(NOTIFIER, "info", "error", note=f"{where}: {type(exc).__name__}: {exc}"[:200])
        await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ the queue

    async def read_back(self) -> None:
        """Every payload the stream holds (a restarted notifier knows them all again), and
        whatever an earlier life of it read but never took."""
        start = "-"
        for _ in range(PAGES):
            entries: Any = await self.redis.xrange(self.queue, min=start, count=BATCH)
            await self.take(entries or [])
            if len(entries or []) < BATCH:
                return
            start = "(" + text(entries[-1][0])

    async def intake(self) -> None:
        while not self.rt.stopping.is_set():
            try:
                reply: Any = await self.redis.xreadgroup(
                    GROUP, self.consumer, {self.queue: ">"}, count=BATCH, block=100
                )
                for _, entries in reply or ():
                    await self.take(entries)
            except (redis_errors.RedisError, OSError) as exc:
                await self._error("reading the queue", exc)

    async def take(self, entries: list[Any]) -> None:
        now = now_ms()
        ladder = ",".join(str(x) for x in self.ladder)
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, raw in entries:
            fields = {text(k): text(v) for k, v in raw.items()}
            order = fields.get("id", "")
            if not order or not fields.get("notify_url", "").startswith("http://"):
                self.rt.note(
                    NOTIFIER, "info", "malformed", note=f"entry {text(entry_id)}: not a notification"
                )
                pipe.xack(self.queue, GROUP, entry_id)
                continue
            self.payloads[order] = fields
            keys = [self.key(order), self.due, self.queue]
            target = fields["notify_url"]
            argv = [order, now, len(self.ladder), ladder, target, GROUP, entry_id, now + self.ladder[0]]
            await self.take_script(keys=keys, args=argv, client=pipe)
        await pipe.execute()
        self.wake.set()

    # ------------------------------------------------------------------ the schedule

    async def schedule(self) -> None:
        """Start every attempt whose time has come; sleep until the next one (or new work)."""
        while not self.rt.stopping.is_set():
            self.wake.clear()  # before the read: what is set meanwhile wakes the next wait
            try:
                now = now_ms()
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrangebyscore(self.due, "-inf", now, start=0, num=BATCH)
                pipe.zrange(self.due, 0, 0, withscores=True)
                due, first = await pipe.execute()
            except (redis_errors.RedisError, OSError) as exc:
                await self._error("reading the schedule", exc)
                continue
            for raw in due:
                order = text(raw)
                if order not in self.in_flight:
                    self.in_flight.add(order)
                    await self.slots.acquire()
                    task = asyncio.create_task(self.attempt(order))
                    task.add_done_callback(functools.partial(self._done, order))
            wait_ms = (float(first[0][1]) - now) if first else 100.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), min(max(wait_ms, 5.0), 50.0) / 1000)

    def _done(self, order: str, _task: object) -> None:
        self.in_flight.discard(order)
        self.slots.release()
        self._detail()

    async def attempt(self, order: str) -> None:
        try:
            await self._attempt(order)
        except (redis_errors.RedisError, OSError) as exc:
            # its lease runs out and it is picked again: the receiver dedups
            await self._error(f"{order}'s attempt", exc)

    async def _attempt(self, order: str) -> None:
        key, now = self.key(order), now_ms()
        lease = now + self.timeout_ms + LEASE_MS
        n = int(await self.claim_script(keys=[key, self.due], args=[order, now, lease]))
        if not n:
            return
        payload = self.payloads.get(order, {})
        attempts = len(self.ladder)
        body = {"id": order, "amount": int(payload.get("amount") or 0), "attempt": n}
        body["created_ms"] = int(payload.get("created_ms") or 0)
        self.rt.served(f"notify {order} ({n}/{attempts})")
        address, _, path = payload.get("notify_url", "").removeprefix("http://").partition("/")
        if address:
            reply = await self.http.post(address, "/" + path, body, self.timeout_ms / 1000)
            said = outcome(reply, self.timeout_ms)
        else:
            said = "not sent: its payload is not in the queue"
        span = {"msg": order, "attempt": n, "answer": said}
        done = now_ms()
        if said == SUCCESS:
            state, last, tick, next_at = messaging.ACKED, f"attempt {n}: success", "acked", 0
            note = f"attempt {n}/{attempts}: success: ACKED"
        elif n >= attempts:
            state, last, tick, next_at = messaging.GAVE_UP, f"attempt {n}: {said}", "gave-up", 0
            note = f"attempt {n}/{attempts}: {said}: GAVE_UP (the ladder is done)"
        else:
            wait = self.ladder[n]
            state, last, tick, next_at = messaging.NOTIFYING, f"attempt {n}: {said}", "notify", done + wait
            note = f"attempt {n}/{attempts}: {said}, next in {seconds(wait)}"
        args: list[str | int] = [order, state, n, last, done, next_at]
        if not await self.settle_script(keys=[key, self.due], args=args):
            note += " (not recorded: the notification moved on meanwhile)"
        self.counts[{"acked": "acked", "gave-up": "gave up"}.get(tick, "retries")] += 1
        kind = {"acked": "ok", "gave-up": "fail"}.get(tick, "info")
        self.rt.note(NOTIFIER, kind, "notify", key=order, value=state, note=f"{order}: {note}",
                     data=span | {"tick": tick})  # fmt: skip
        self.wake.set()


def main() -> None:
    p = parser("the notifier: sends each payment's notification on a backoff ladder until 'success'")
    p.add_argument("--redis", required=True, help="where the queue and the notifications live (Redis URL)")
    p.add_argument("--ladder", required=True, help="ms before each attempt, comma-separated (first: 0)")
    p.add_argument("--timeout-ms", type=int, required=True, help="how long an attempt waits for its answer")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    notifier = Notifier(rt, args)
    run(rt.serve([], on_start=notifier.start, on_close=notifier.close))


if __name__ == "__main__":
    main()
