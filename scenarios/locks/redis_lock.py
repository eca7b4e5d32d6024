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
seed's "waiters must keep trying at intervals"; whoever happens to ask right
after a release wins, often the releaser itself) or queues and is *woken*:
it joins ``coordscope:queue:<name>``, a free lock goes only to the oldest
waiter still polling, and the release pushes a token on that waiter's own
``coordscope:signal:<name>:<client>`` where it blocks in ``BLPOP`` — FIFO
hand-offs within a round trip. A waiter never blocks past the holder's
remaining lease (a holder that died costs at most its TTL), and a queued
waiter that falls silent for three block periods is dropped from the queue.

Error handling: the scripts are loaded on first use and reloaded after a
``NOSCRIPT`` (a restarted node has an empty script cache; redis-py's
``Script`` object does this). Connection errors reach the caller, which
records them in the run's history: a lock service that is down is part of
what the scenarios show.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from collectors.layouts import coordscope
from collectors.state import now_ms

# The acquire script, in two flavours built from the same pieces: the plain lock
# (anyone may take a free lock) and the fair one (only the oldest live waiter may).
#
# KEYS[1] - the lock key
# KEYS[2] - the fencing counter
# KEYS[3] - the waiters hash (client -> since_ms:polls:last_seen_ms), for observers
# KEYS[4] - the queue of waiters, oldest first (fair flavour only)
# ARGV[1] - owner (the client's name)
# ARGV[2] - nonce (random per acquisition)
# ARGV[3] - ttl in milliseconds
# ARGV[4] - now, in ms (the caller's clock: "since", and liveness of queued waiters)
# Returns {fence, value} when granted, {0, current value, its PTTL} when not.
_WAITING = """
local function waiting(current, pttl)
    local seen = redis.call('HGET', KEYS[3], ARGV[1])
    local since, polls = ARGV[4], 0
    if seen then
        local a = string.find(seen, ':', 1, true)
        local b = string.find(seen, ':', a + 1, true) or (#seen + 1)
        since = string.sub(seen, 1, a - 1)
        polls = tonumber(string.sub(seen, a + 1, b - 1)) or 0
    end
    redis.call('HSET', KEYS[3], ARGV[1], since .. ':' .. (polls + 1) .. ':' .. ARGV[4])
    redis.call('PEXPIRE', KEYS[3], 10 * tonumber(ARGV[3]))
    QUEUE_UP
    return {0, current, pttl}
end
local current = redis.call('GET', KEYS[1])
if current then
    return waiting(current, redis.call('PTTL', KEYS[1]))
end
"""
_QUEUE_UP = """if not redis.call('LPOS', KEYS[4], ARGV[1]) then
        redis.call('RPUSH', KEYS[4], ARGV[1])
        redis.call('PEXPIRE', KEYS[4], 10 * tonumber(ARGV[3]))
    end"""
_OLDEST_FIRST = """
while true do
    local head = redis.call('LINDEX', KEYS[4], 0)
    if not head or head == ARGV[1] then break end
    local seen = redis.call('HGET', KEYS[3], head) or ''
    local last = tonumber(string.match(seen, ':(%d+)$')) or 0
    if tonumber(ARGV[4]) - last <= STALE_MS then
        return waiting('', 0)  -- someone queued before us and is still there
    end
    redis.call('LPOP', KEYS[4])  -- a waiter that went silent: drop it
    redis.call('HDEL', KEYS[3], head)
end
redis.call('LREM', KEYS[4], 1, ARGV[1])
"""
_GRANT = """
local fence = redis.call('INCR', KEYS[2])
local value = '{"owner":' .. cjson.encode(ARGV[1]) .. ',"fence":' .. fence .. ',"nonce":"'
    .. ARGV[2] .. '"}'
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[1])
return {fence, value}
"""
MAX_BLOCK_S = 2.0
"""A waiter re-checks at least this often (and stays under the client's socket timeout)."""
STALE_MS = int(3 * MAX_BLOCK_S * 1000)
"""A queued waiter silent this long is dropped from the queue."""

ACQUIRE = _WAITING.replace("QUEUE_UP", "") + _GRANT
ACQUIRE_FAIR = (
    _WAITING.replace("QUEUE_UP", _QUEUE_UP) + _OLDEST_FIRST.replace("STALE_MS", str(STALE_MS)) + _GRANT
)

# KEYS[1] - the lock key
# ARGV[1] - the value we stored when we acquired
# Returns 1 when it deleted our lock, 0 when the lock was not ours any more.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] - the lock key
# KEYS[2] - the queue of waiters
# ARGV[1] - the value we stored when we acquired
# ARGV[2] - how long an unclaimed wake-up may linger, in ms
# ARGV[3] - the prefix of the waiters' signal lists (coordscope:signal:<name>:)
# Returns 1 when it deleted our lock (and woke the oldest waiter), 0 when it was not ours.
RELEASE_FAIR = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
    local signal = ARGV[3] .. head
    redis.call('LPUSH', signal, '1')
    redis.call('LTRIM', signal, 0, 0)
    redis.call('PEXPIRE', signal, ARGV[2])
end
return 1
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


class Grant(NamedTuple):
    fence: int
    value: str


class Denied(NamedTuple):
    pttl_ms: int
    """The holder's remaining lease (-1: no TTL)."""


class _Script:
    """A Lua script called by its SHA straight through ``execute_command``.

    redis-py's ``Script`` does the same with more work per call (an import, tuple
    copies, a pipeline check); on the lock's hot path that overhead is what an
    uncontended acquire+release pays on top of the round trips. A ``NOSCRIPT``
    (a restarted node has an empty script cache) loads the script and retries.
    Pipelines use the ``Script`` object, which registers itself with them."""

    def __init__(self, client: Redis, source: str) -> None:
        self.client = client
        self.script = client.register_script(source)
        self.sha = self.script.sha

    async def __call__(self, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            return await self.script(keys, args)


class RedisLock:
    """One client's handle on a named lock on one Redis node.

    ``waiting="poll"``: the seed's lock — a waiter retries every ``poll_s``; whoever
    asks at the right moment gets it (no order at all). ``waiting="signal"``: waiters
    queue, a free lock goes only to the oldest live waiter, and the release wakes it.
    """

    def __init__(
        self, client: Redis, name: str, owner: str, ttl_ms: int, waiting: str = "poll", poll_s: float = 0.05
    ) -> None:
        # The handle's own connection (taken from the client's pool on first use and
        # kept until aclose): the hot path skips a pool checkout per command, and a
        # waiter blocked in BLPOP holds only its own connection.
        # (a Redis Cluster's client has no such handle: it keeps a connection per node)
        self.client = client.client() if isinstance(client, Redis) else client
        self.name = name
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.waiting = waiting
        self.poll_s = poll_s
        self.key = coordscope.lock_key(name)
        self.signal_key = coordscope.signal_key(name, owner)
        fair = waiting == "signal"
        self._acquire = _Script(self.client, ACQUIRE_FAIR if fair else ACQUIRE)
        self._release = _Script(self.client, RELEASE_FAIR if fair else RELEASE)
        self._extend = _Script(self.client, EXTEND)
        # built once: acquire and release are hot paths
        self._keys = [self.key, coordscope.fence_key(name), coordscope.waiters_key(name)]
        self._release_keys = [self.key]
        self._release_tail: list[str | int] = []
        if fair:
            self._keys.append(coordscope.queue_key(name))
            self._release_keys.append(coordscope.queue_key(name))
            self._release_tail = [10 * ttl_ms, coordscope.signal_key(name, "")]
        self._nonce_prefix = os.urandom(6).hex()
        self._grants = 0

    def _acquire_args(self, now_ms: int) -> list[str | int]:
        # a nonce unique to this handle's every attempt, without a syscall each time
        self._grants += 1
        return [self.owner, f"{self._nonce_prefix}{self._grants:x}", self.ttl_ms, now_ms]

    def _outcome(self, reply: Any) -> Grant | Denied:
        if int(reply[0]) == 0:
            return Denied(pttl_ms=int(reply[2]))
        return Grant(fence=int(reply[0]), value=_text(reply[1]))

    async def try_acquire(self, now_ms: int) -> Grant | Denied:
        """One attempt: a grant, or who holds it (we are then a waiter)."""
        return self._outcome(await self._acquire(self._keys, self._acquire_args(now_ms)))

    async def try_acquire_replicated(
        self, now_ms: int, replicas: int, timeout_ms: int
    ) -> tuple[Grant | Denied, int]:
        """One attempt followed by ``WAIT replicas timeout_ms`` on the same connection:
        the outcome and how many replicas acknowledged it."""
        pipe = self.client.pipeline(transaction=False)
        await self._acquire.script(self._keys, self._acquire_args(now_ms), client=pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, acks = await pipe.execute()
        return self._outcome(reply), int(acks)

    async def acquire(self) -> tuple[Grant, int]:
        """Attempt until granted, waiting our turn in between: the grant and the attempts."""
        attempts = 0
        while True:
            attempts += 1
            outcome = await self.try_acquire(now_ms())
            if isinstance(outcome, Grant):
                return outcome, attempts
            await self.wait_turn(outcome)

    async def wait_turn(self, denied: Denied) -> None:
        """Between two attempts: sleep (``poll``), or block until the release wakes us
        (``signal``) — never past the holder's lease, so a dead holder costs its TTL."""
        if self.waiting == "poll":
            await asyncio.sleep(self.poll_s)
            return
        lease_s = denied.pttl_ms / 1000 if denied.pttl_ms > 0 else self.poll_s
        await self.client.blpop([self.signal_key], timeout=max(0.001, min(lease_s, MAX_BLOCK_S)))

    async def release(self, grant: Grant) -> bool:
        """Compare-and-delete (and wake the oldest waiter): True when it was still ours."""
        args: list[str | int] = [grant.value, *self._release_tail]
        return int(await self._release(self._release_keys, args)) == 1

    async def extend(self, grant: Grant, ttl_ms: int) -> bool:
        """Compare-and-PEXPIRE: renew our lease (what a watchdog does)."""
        return int(await self._extend([self.key], [grant.value, ttl_ms])) == 1

    async def release_naive(self) -> bool:
        """Plain DEL: deletes the lock whoever holds it (the bug the seed warns about)."""
        return int(await self.client.delete(self.key)) == 1

    async def aclose(self) -> None:
        """Give the handle's connection back to the pool."""
        await self.client.aclose()


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
