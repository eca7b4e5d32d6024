"""The broker of ``txn-reliable-message``: transactional (half) messages as RocketMQ keeps
them, a process of its own over Redis.

A producer sends a message as HALF: stored, not visible to any consumer (RocketMQ
parks it in ``RMQ_SYS_TRANS_HALF_TOPIC``). It then runs its local transaction and ends
the message with COMMIT (delivered: ``XADD`` to the topic's stream, read by consumer
groups) or ROLLBACK (dropped). A message the producer never ends is *checked back*: the
broker asks the producer what became of its transaction (RocketMQ's
``checkLocalTransaction``), first ``--check-after-ms`` after the HALF was stored
(``transactionTimeout``, 6 s), then every ``--check-every-ms``
(``transactionCheckInterval``, 60 s); an answer of COMMIT or ROLLBACK ends it, UNKNOWN or
no answer leaves it for the next check, and after ``max_checks`` checks
(``transactionCheckMax``, 15) the message is DISCARDED — never delivered, whatever the
producer did (RocketMQ moves it to ``TRANS_CHECK_MAX_TIME_TOPIC``).

Where it lives (:mod:`collectors.layouts.messaging` names every key):

- each message is the hash ``half_key(run, id)``: ``state`` (HALF, COMMITTED,
  ROLLED_BACK, DISCARDED), ``topic``, ``producer``, ``body``, ``checks``,
  ``max_checks``, ``half_ms``, ``next_check_ms`` (while HALF), ``decided_ms``,
  ``last_answer``;
- the check schedule is the zset ``half_schedule_key(run)``: each HALF message's id
  scored by its next check (wall-clock ms);
- a committed message is an entry of ``topic_key(run, topic)`` (``id``, ``producer``,
  ``body``).

Every change of a message is one Lua script (:data:`HALF_SCRIPT`, :data:`DECIDE`), so its
hash, the schedule and the topic never disagree: a COMMIT that delivers also leaves the
schedule and says COMMITTED, or none of it happened. A decided message stays decided:
a second ``/end``, or a check's answer that comes after the producer's own word, changes
nothing (it is told the state it found).

``POST /half {id, topic, body, producer}`` -> ``{"state"}`` (a HALF sent again is
answered with the state stored); ``POST /end {id, action: COMMIT|ROLLBACK}`` ->
``{"state", "entry"}``. The producer's address for a check-back is its registration
in the store (``coordscope:service:<run>:<producer>``), as RocketMQ reaches a producer
group through the connections its members keep: a producer that died answers nothing.

Error handling
--------------
A check that gets no answer — the producer's port refuses (it is dead), the call times
out after ``--check-timeout-ms``, an HTTP error, an answer that is not one of the three
words — counts as a check with its reason as ``last_answer`` (``no answer (refused)``),
exactly as RocketMQ counts a check it sent whatever came back. A Redis error in the
check loop is narrated and the loop goes on after a short pause; the message stays
scheduled, so it is checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.layouts import coordscope, messaging
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client, text
from scenarios.kit.http import Http
from scenarios.kit.process import ServiceRuntime, parser, run

ANSWERS = ("COMMIT", "ROLLBACK", "UNKNOWN")
DUE_BATCH = 32
IDLE_S = 0.05
"""The check loop looks at its schedule at least this often."""

# Store a HALF message and schedule its first check (nothing, if the id is stored already).
# KEYS[1] - the message's hash, KEYS[2] - the check schedule
# ARGV[1] - the id, ARGV[2] - topic, ARGV[3] - producer, ARGV[4] - body, ARGV[5] - max checks,
# ARGV[6] - now (ms), ARGV[7] - its first check (ms)
# Returns the state the message has now, and 1 when it was stored by this call
HALF_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {state, 0} end
redis.call('HSET', KEYS[1], 'state', 'HALF', 'topic', ARGV[2], 'producer', ARGV[3], 'body', ARGV[4],
           'checks', 0, 'max_checks', ARGV[5], 'half_ms', ARGV[6], 'next_check_ms', ARGV[7],
           'last_answer', '')
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return {'HALF', 1}
"""

# The producer's word on a HALF message — its own COMMIT or ROLLBACK, or its answer to a check —
# and what follows from it. A message no longer HALF is left as it is.
# KEYS[1] - the message's hash, KEYS[2] - the check schedule, KEYS[3] - the topic's stream
# ARGV[1] - the id, ARGV[2] - the word (COMMIT, ROLLBACK, UNKNOWN or why none came),
# ARGV[3] - now (ms), ARGV[4] - the next check (ms) when this is a check's answer, '' for an end
# Returns {state now, checks made (-1: not a check), the stream entry when delivered now,
#          the state found when it was decided already ('' otherwise)}
DECIDE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'HALF' then return {state or '', -1, '', state or 'unknown'} end
local checks = -1
if ARGV[4] ~= '' then checks = redis.call('HINCRBY', KEYS[1], 'checks', 1) end
redis.call('HSET', KEYS[1], 'last_answer', ARGV[2])
local decided, entry = nil, ''
if ARGV[2] == 'COMMIT' then
    local f = redis.call('HMGET', KEYS[1], 'producer', 'body')
    entry = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1], 'producer', f[1], 'body', f[2])
    decided = 'COMMITTED'
elseif ARGV[2] == 'ROLLBACK' then
    decided = 'ROLLED_BACK'
elseif checks >= tonumber(redis.call('HGET', KEYS[1], 'max_checks')) then
    decided = 'DISCARDED'
end
if decided then
    redis.call('HSET', KEYS[1], 'state', decided, 'decided_ms', ARGV[3])
    redis.call('HDEL', KEYS[1], 'next_check_ms')
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {decided, checks, entry, ''}
end
if checks >= 0 then
    redis.call('HSET', KEYS[1], 'next_check_ms', ARGV[4])
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
return {'HALF', checks, '', ''}
"""


class Broker:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.run_id = rt.run_id
        self.redis: Redis = redis_client(RedisTarget.from_url(args.redis))
        self.check_after_ms: int = args.check_after_ms
        self.check_every_ms: int = args.check_every_ms
        self.max_checks: int = args.max_checks
        self.check_timeout_s: float = args.check_timeout_ms / 1000
        self.schedule = messaging.half_schedule_key(self.run_id)
        self.half_script = self.redis.register_script(HALF_SCRIPT)
        self.decide_script = self.redis.register_script(DECIDE)
        self.http = Http(connections=16)
        self.checking: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.Task[None] | None = None
        self.counts = dict.fromkeys(messaging.HALF_STATES, 0)

    async def start(self) -> None:
        self.loop = asyncio.create_task(self.check_loop())
        self._detail()

    async def close(self) -> None:
        for task in [*self.tasks, *([self.loop] if self.loop else [])]:
            task.cancel()
        await asyncio.gather(*self.tasks, *([self.loop] if self.loop else []), return_exceptions=True)
        await self.http.aclose()
        await self.redis.aclose()

    def _detail(self) -> None:
        self.rt.detail = ", ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in self.counts.items())

    def note(self, kind: str, f: str, msg: str, tick: str | None, note: str, **data: Any) -> None:
        """Narrate a step of message ``msg`` on the broker's lane (batched: the hot path)."""
        detail = {"msg": msg, **({"tick": tick} if tick else {}), **data}
        self.rt.note(self.rt.name, kind, f, key=msg, note=f"{msg}: {note}", data=detail)

    # ------------------------------------------------------------------ the producer's side

    async def half(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            msg, topic = str(body["id"]), str(body["topic"])
            producer, payload = str(body["producer"]), str(body["body"])
            if not msg or not topic or not producer or any(c in msg for c in "*?[]\\ "):
                raise ValueError(body)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {id (no glob characters), topic, body, producer}"}, 400)
        self.rt.served(f"half {msg}")
        now = now_ms()
        first = now + self.check_after_ms
        state, stored = await self.half_script(
            keys=[messaging.half_key(self.run_id, msg), self.schedule],
            args=[msg, topic, producer, payload, self.max_checks, now, first],
        )
        state = text(state)
        if int(stored):
            self._count(state)
            self.note(
                "ok", "half", msg, "half",
                f"stored HALF (topic {topic}, from {producer}): invisible to consumers; "
                f"first check in {self.check_after_ms} ms",
                state=state,
            )  # fmt: skip
        else:
            self.note(
                "ok", "half", msg, None, f"HALF sent again: already {state}, nothing changed", state=state
            )
        return JSONResponse({"state": state})

    async def end(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            msg, action = str(body["id"]), str(body["action"])
            if action not in ("COMMIT", "ROLLBACK"):
                raise ValueError(action)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {id, action: COMMIT|ROLLBACK}"}, 400)
        self.rt.served(f"end {msg} {action}")
        state, _, entry, found = await self._decide(msg, action, "")
        if found == "unknown":
            self.note("fail", "end", msg, "error", f"{action} for a message never stored here", action=action)
            return JSONResponse({"error": f"no message {msg}"}, 404)
        if found:
            expected = {"COMMIT": messaging.COMMITTED, "ROLLBACK": messaging.ROLLED_BACK}[action]
            late = found != expected  # the producer's word came after the broker decided otherwise
            self.note(
                "ok", "end", msg, "error" if late else None,
                f"{action} from the producer: already {found}, nothing done"
                + (" — too late: it will never be delivered" if late and action == "COMMIT" else ""),
                action=action, state=found,
            )  # fmt: skip
        else:
            self._decided(msg, state, entry, f"{action} from the producer", action=action)
        return JSONResponse({"state": state, "entry": entry})

    async def _decide(self, msg: str, word: str, next_ms: int | str) -> tuple[str, int, str, str]:
        raw = await self.redis.hget(messaging.half_key(self.run_id, msg), "topic")
        topic = text(raw) if raw is not None else "?"
        state, checks, entry, found = await self.decide_script(
            keys=[
                messaging.half_key(self.run_id, msg),
                self.schedule,
                messaging.topic_key(self.run_id, topic),
            ],
            args=[msg, word, now_ms(), next_ms],
        )
        return text(state), int(checks), text(entry), text(found)

    def _count(self, state: str, before: str = "") -> None:
        if before in self.counts:
            self.counts[before] -= 1
        if state in self.counts:
            self.counts[state] += 1
        self._detail()

    def _decided(self, msg: str, state: str, entry: str, why: str, **data: Any) -> None:
        """Narrate a decision just made (by the producer's word, a check, or the last check)."""
        if state == messaging.HALF:
            return
        self._count(state, messaging.HALF)
        if state == messaging.COMMITTED:
            self.note("ok", "deliver", msg, "published", f"{why}: delivered as {entry}", entry=entry, **data)
        elif state == messaging.ROLLED_BACK:
            self.note("ok", "drop", msg, "rolled-back", f"{why}: rolled back, never delivered", **data)
        else:
            self.note("ok", "discard", msg, "discarded", f"{why}: DISCARDED, never delivered", **data)

    # ------------------------------------------------------------------ check-backs

    async def check_loop(self) -> None:
        while not self.rt.stopping.is_set():
            try:
                due = await self.redis.zrangebyscore(self.schedule, "-inf", now_ms(), start=0, num=DUE_BATCH)
                for raw in due:
                    msg = text(raw)
                    if msg not in self.checking:
                        self.checking.add(msg)
                        task = asyncio.create_task(self.check(msg))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
            except (redis_errors.RedisError, OSError) as exc:
                self.rt.note(
                    self.rt.name, "info", "error", note=f"check loop: {type(exc).__name__}: {exc}"[:200]
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.stopping.wait(), IDLE_S)

    async def check(self, msg: str) -> None:
        try:
            producer = text(await self.redis.hget(messaging.half_key(self.run_id, msg), "producer") or b"")
            answer, why = await self.ask(producer, msg)
            n = await self._checked(msg, answer, why)
            if n is None:
                return
        except (redis_errors.RedisError, OSError) as exc:
            note = f"check failed in Redis ({type(exc).__name__}: {exc}): checked again"
            self.note("info", "check", msg, "error", note[:200])
        finally:
            self.checking.discard(msg)

    async def _checked(self, msg: str, answer: str, why: str) -> int | None:
        state, checks, entry, found = await self._decide(msg, answer, now_ms() + self.check_every_ms)
        if found:  # the producer's own COMMIT or ROLLBACK came while we asked
            self.note("ok", "check", msg, None, f"check answered {answer}, but already {found}: nothing done")
            return None
        limit = f"{checks}/{self.max_checks}"
        self.note(
            "ok", "check", msg, "check", f"check {limit}: {answer}" + (f" ({why})" if why else ""),
            answer=answer, checks=checks, state=state,
        )  # fmt: skip
        if state == messaging.DISCARDED:
            why_discard = f"{checks} check(s) made, none answered COMMIT or ROLLBACK (last: {answer})"
            self._decided(msg, state, entry, why_discard, checks=checks, answer=answer)
        else:
            self._decided(msg, state, entry, f"check {limit} answered {answer}", checks=checks, answer=answer)
        return checks

    async def ask(self, producer: str, msg: str) -> tuple[str, str]:
        """The producer's answer for ``msg`` (COMMIT, ROLLBACK, UNKNOWN, or ``no answer (...)``)
        and its reason, as it gave one."""
        raw = await self.rt.control.hget(coordscope.service_key(self.run_id, producer), "address")
        if raw is None:
            return "no answer (producer not registered)", ""
        reply = await self.http.get(text(raw), f"/check?id={quote(msg)}", self.check_timeout_s)
        if reply.status is None:
            return f"no answer ({reply.error})", ""
        word = str(reply.body.get("answer", ""))
        if not reply.ok or word not in ANSWERS:
            return f"no answer (HTTP {reply.status})", str(reply.body.get("error", ""))[:120]
        return word, str(reply.body.get("why", ""))[:160]


def main() -> None:
    p = parser("a broker of transactional (half) messages with check-backs, kept in Redis")
    p.add_argument("--redis", required=True, help="where the messages live (Redis URL)")
    p.add_argument("--check-after-ms", type=int, required=True)
    p.add_argument("--check-every-ms", type=int, required=True)
    p.add_argument("--max-checks", type=int, required=True)
    p.add_argument("--check-timeout-ms", type=int, default=500)
    args = p.parse_args()
    rt = ServiceRuntime(args)
    broker = Broker(rt, args)
    routes = [Route("/half", broker.half, methods=["POST"]), Route("/end", broker.end, methods=["POST"])]
    run(rt.serve(routes, on_start=broker.start, on_close=broker.close))


if __name__ == "__main__":
    main()
