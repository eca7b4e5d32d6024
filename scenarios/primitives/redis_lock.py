"""coordscope's Redis lock: ``SET NX PX`` with a fencing token, and a fenced resource.

Acquire (one Lua script, so the steps cannot interleave with another client):
if the lock key is free, ``INCR`` the fencing counter and ``SET`` the lock to
``{"owner", "fence", "nonce"}`` with ``PX ttl``; otherwise record the caller
as a waiter (``coordscope:waiters:<name>``: since when, how many polls) so
that observers can see who is queueing and how hard they poll. The fencing
token increases with every grant (Kleppmann's fencing tokens): the protected
resource rejects a write carrying a token lower than one it has seen.

Release (the seed's rule): delete the key only if it still holds *our*
value — a Lua compare-and-delete. The naive variant is a plain ``DEL``,
which deletes whoever holds the lock now: after our lease ran out, that is
someone else.

Waiting: a waiter either polls (sleeps ``poll_ms`` between attempts: the
seed's "waiters must keep trying at intervals") or is *woken*: the release
script pushes one token on ``coordscope:signal:<name>`` and waiters block in
``BLPOP`` on it, which Redis serves longest-waiting first — so the next
holder learns of the release within a round trip, in arrival order. A
waiter never blocks past the holder's remaining lease, so a holder that
died without releasing costs at most its TTL.

Error handling: the scripts are loaded on first use and reloaded after a
``NOSCRIPT`` (a restarted node has an empty script cache; redis-py's
``Script`` object does this). Connection errors reach the caller, which
records them in the run's history: a lock service that is down is part of
what the scenarios show.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import coordscope

# KEYS[1] - the lock key
# KEYS[2] - the fencing counter
# KEYS[3] - the waiters hash
# ARGV[1] - owner (the client's name)
# ARGV[2] - nonce (random per acquisition)
# ARGV[3] - ttl in milliseconds
# ARGV[4] - now, in ms (the caller's clock, for the waiters' "since")
# Returns {fence, value} when granted, {0, current value, its PTTL} when not.
ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
    local seen = redis.call('HGET', KEYS[3], ARGV[1])
    local since, polls = ARGV[4], 0
    if seen then
        local sep = string.find(seen, ':', 1, true)
        since = string.sub(seen, 1, sep - 1)
        polls = tonumber(string.sub(seen, sep + 1))
    end
    redis.call('HSET', KEYS[3], ARGV[1], since .. ':' .. (polls + 1))
    redis.call('PEXPIRE', KEYS[3], 10 * tonumber(ARGV[3]))
    return {0, current, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
local value = cjson.encode({owner = ARGV[1], fence = fence, nonce = ARGV[2]})
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
return {fence, value}
"""

# KEYS[1] - the lock key
# KEYS[2] - the release signal list (waiters BLPOP on it)
# ARGV[1] - the value we stored when we acquired
# ARGV[2] - how long an unclaimed signal may linger, in ms
# Returns 1 when it deleted our lock (and woke one waiter), 0 when it was not ours any more.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('DEL', KEYS[2])
    redis.call('RPUSH', KEYS[2], '1')
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return 1
end
return 0
"""

# KEYS[1] - the lock key
# ARGV[1] - the value we stored when we acquired
# ARGV[2] - the new lease, in ms
# Returns 1 when it extended our lock, 0 when the lock was not ours any more.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] - the resource hash (value, fence, writer, writes, rejected)
# ARGV[1] - the writer's fencing token
# ARGV[2] - the new value
# ARGV[3] - the writer
# ARGV[4] - '1' to enforce fencing, '0' to accept anything
# Returns {1, highest fence seen} when accepted, {0, highest fence seen} when rejected.
FENCED_WRITE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local fence = tonumber(ARGV[1])
if ARGV[4] == '1' and fence < seen then
    redis.call('HINCRBY', KEYS[1], 'rejected', 1)
    return {0, seen}
end
if fence > seen then
    redis.call('HSET', KEYS[1], 'fence', fence)
    seen = fence
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'writer', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'writes', 1)
return {1, seen}
"""


MAX_BLOCK_S = 2.0
"""A waiter re-checks at least this often (and stays under the client's socket timeout)."""


@dataclass(frozen=True)
class Grant:
    fence: int
    value: str


@dataclass(frozen=True)
class Denied:
    holder_value: str
    pttl_ms: int
    """The holder's remaining lease (-1: no TTL)."""


class RedisLock:
    """One client's handle on a named lock on one Redis node."""

    def __init__(self, client: Redis, name: str, owner: str, ttl_ms: int) -> None:
        self.client = client
        self.name = name
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.key = coordscope.lock_key(name)
        self.signal_key = coordscope.signal_key(name)
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._extend = client.register_script(EXTEND)

    def _acquire_keys(self) -> list[str]:
        return [self.key, coordscope.fence_key(self.name), coordscope.waiters_key(self.name)]

    def _acquire_args(self, now_ms: int) -> list[Any]:
        return [self.owner, secrets.token_hex(8), self.ttl_ms, now_ms]

    @staticmethod
    def _outcome(reply: Any) -> Grant | Denied:
        if int(reply[0]) == 0:
            return Denied(holder_value=_text(reply[1]), pttl_ms=int(reply[2]))
        return Grant(fence=int(reply[0]), value=_text(reply[1]))

    async def try_acquire(self, now_ms: int) -> Grant | Denied:
        """One attempt: a grant, or who holds it (we are then a waiter)."""
        return self._outcome(await self._acquire(self._acquire_keys(), self._acquire_args(now_ms)))

    async def try_acquire_replicated(
        self, now_ms: int, replicas: int, timeout_ms: int
    ) -> tuple[Grant | Denied, int]:
        """One attempt followed by ``WAIT replicas timeout_ms`` on the same connection:
        the outcome and how many replicas acknowledged it."""
        pipe = self.client.pipeline(transaction=False)
        await self._acquire(self._acquire_keys(), self._acquire_args(now_ms), client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, acks = await pipe.execute()
        return self._outcome(reply), int(acks)

    async def wait_turn(self, denied: Denied, waiting: str, poll_s: float) -> None:
        """Between two attempts: sleep (``poll``) or block until a release wakes us (``signal``)."""
        if waiting == "poll":
            await asyncio.sleep(poll_s)
            return
        lease_s = denied.pttl_ms / 1000 if denied.pttl_ms > 0 else poll_s
        await self.client.blpop([self.signal_key], timeout=max(0.001, min(lease_s, MAX_BLOCK_S)))

    async def release(self, grant: Grant) -> bool:
        """Compare-and-delete (and wake a waiter): True when it was still ours."""
        keys = [self.key, self.signal_key]
        return int(await self._release(keys=keys, args=[grant.value, 10 * self.ttl_ms])) == 1

    async def extend(self, grant: Grant, ttl_ms: int) -> bool:
        """Compare-and-PEXPIRE: renew our lease (what a watchdog does)."""
        return int(await self._extend(keys=[self.key], args=[grant.value, ttl_ms])) == 1

    async def release_naive(self) -> bool:
        """Plain DEL: deletes the lock whoever holds it (the bug the seed warns about)."""
        return int(await self.client.delete(self.key)) == 1


class FencedResource:
    """The protected resource: a counter that can reject writes with stale tokens."""

    def __init__(self, client: Redis, name: str, fencing: bool) -> None:
        self.client = client
        self.key = coordscope.resource_key(name)
        self.fencing = fencing
        self._write = client.register_script(FENCED_WRITE)

    async def read(self) -> int:
        raw = await self.client.hget(self.key, "value")
        return int(raw or 0)

    async def write(self, value: int, fence: int, writer: str) -> tuple[bool, int]:
        """(accepted, highest fence the resource had seen)."""
        ok, seen = await self._write(
            keys=[self.key], args=[fence, value, writer, "1" if self.fencing else "0"]
        )
        return int(ok) == 1, int(seen)

    async def totals(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.key)
        return {_text(k): int(v) for k, v in raw.items() if v.isdigit()}


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
