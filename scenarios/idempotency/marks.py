"""An idempotency mark in Redis: at most one instance runs a request id, and a duplicate
gets the first answer replayed.

State machine (one hash per request id, ``coordscope:mark:<run>:<order>``)::

    ABSENT --claim--> IN_PROGRESS{owner, fingerprint, lease_until} --complete--> COMPLETED{code, body}
    IN_PROGRESS --lease ends (owner died, or too slow)--> the next claim takes it over
    IN_PROGRESS --release (the request failed before its effect)--> ABSENT
    COMPLETED --TTL--> ABSENT: the same id now counts as a new request

The claim is one Lua script (check and set cannot interleave with another
instance's) and answers, as the IETF Idempotency-Key draft and Stripe do:

- ``claimed`` / ``taken-over``: go ahead (the caller runs the request);
- ``in-flight``: another instance holds an unexpired claim — 409;
- ``replay``: it completed — the stored code and body, with
  ``Idempotent-Replayed``;
- ``mismatch``: the same id with another payload (fingerprint) — 422.

Leases run on the Redis server's clock (``TIME`` inside the script), so the
instances' clocks do not matter. A mark cannot know whether the effect of an
IN_PROGRESS request happened before its owner died: a take-over runs the
request again. That is the window the scenario's ``crash_at=after-charge``
shows, and why a unique key in the database is the backstop.

Cost: a claim and a completion, two round trips per request.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError

from collectors.layouts import coordscope
from collectors.targets import RedisTarget
from scenarios.kit.wire import Wire

# KEYS[1] - the mark
# ARGV[1] - owner (the instance claiming), ARGV[2] - fingerprint of the payload,
# ARGV[3] - lease in ms, ARGV[4] - the mark's TTL in ms, ARGV[5] - the request's id
# Returns {outcome, a, b}: {'claimed', '', ''} | {'taken-over', previous owner, ''} |
# {'in-flight', owner, ms left} | {'replay', code, body} | {'mismatch', stored fingerprint, ''}
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
if state then
    local fp = redis.call('HGET', KEYS[1], 'fingerprint') or ''
    if fp ~= ARGV[2] then
        return {'mismatch', fp, ''}
    end
    if state == 'COMPLETED' then
        local reply = redis.call('HMGET', KEYS[1], 'code', 'body')
        return {'replay', reply[1] or '', reply[2] or ''}
    end
    local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') or 0
    local owner = redis.call('HGET', KEYS[1], 'owner') or ''
    if now < lease then
        return {'in-flight', owner, tostring(lease - now)}
    end
    redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until', now + tonumber(ARGV[3]),
               'request', ARGV[5], 'claimed_ms', now)
    redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {'taken-over', owner, ''}
end
redis.call('HSET', KEYS[1], 'state', 'IN_PROGRESS', 'owner', ARGV[1], 'fingerprint', ARGV[2],
           'lease_until', now + tonumber(ARGV[3]), 'request', ARGV[5], 'claimed_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'claimed', '', ''}
"""

# KEYS[1] - the mark
# ARGV[1] - owner, ARGV[2] - response code, ARGV[3] - response body, ARGV[4] - the mark's TTL in ms,
# ARGV[5] - the request's id (an instance may have taken over a claim of its own that lapsed)
# Returns 1 when it completed our claim, 0 when the claim is not ours any more (taken over).
COMPLETE = """
local claim = redis.call('HMGET', KEYS[1], 'owner', 'state', 'request')
if claim[1] ~= ARGV[1] or claim[2] ~= 'IN_PROGRESS' or claim[3] ~= ARGV[5] then
    return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'code', ARGV[2], 'body', ARGV[3],
           'completed_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1] - the mark
# ARGV[1] - owner, ARGV[2] - the request's id
# Returns 1 when it removed our claim (the request failed before its effect: retry allowed).
RELEASE = """
local claim = redis.call('HMGET', KEYS[1], 'owner', 'state', 'request')
if claim[1] == ARGV[1] and claim[2] == 'IN_PROGRESS' and claim[3] == ARGV[2] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Claim(NamedTuple):
    outcome: str
    """claimed | taken-over | in-flight | replay | mismatch"""
    a: str = ""
    b: str = ""

    @property
    def go(self) -> bool:
        return self.outcome in ("claimed", "taken-over")


def mark_key(run_id: str, order: str) -> str:
    return coordscope.mark_key(f"{run_id}:{order}")


def fingerprint(order: str, amount: int) -> str:
    """The payload's fingerprint: the same id with another amount is refused (422)."""
    return hashlib.sha256(f"{order}:{amount}".encode()).hexdigest()[:16]


class _Script:
    """A Lua script called by its SHA (loaded once more after a ``NOSCRIPT``: a restarted
    node has an empty script cache)."""

    def __init__(self, wire: Wire, source: str) -> None:
        self.wire = wire
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, key: str, *args: str | int) -> Any:
        try:
            return await self.wire.call("EVALSHA", self.sha, 1, key, *args)
        except NoScriptError:
            return await self.wire.call("EVAL", self.source, 1, key, *args)


class Marks:
    """One instance's handle on the marks of a run: one connection, shared by its requests
    (:class:`scenarios.kit.wire.Wire`: the mark's two round trips are the hot path)."""

    def __init__(self, target: RedisTarget, owner: str, lease_ms: int, ttl_ms: int) -> None:
        self.owner = owner
        self.lease_ms = lease_ms
        self.ttl_ms = ttl_ms
        self.wire = Wire(target)
        self._claim = _Script(self.wire, CLAIM)
        self._complete = _Script(self.wire, COMPLETE)
        self._release = _Script(self.wire, RELEASE)

    async def claim(self, key: str, fp: str, request_id: str) -> Claim:
        reply = await self._claim(key, self.owner, fp, self.lease_ms, self.ttl_ms, request_id)
        return Claim(*(_text(x) for x in reply))

    async def complete(self, key: str, request_id: str, code: int, body: str) -> bool:
        return int(await self._complete(key, self.owner, code, body, self.ttl_ms, request_id)) == 1

    async def release(self, key: str, request_id: str) -> bool:
        return int(await self._release(key, self.owner, request_id)) == 1

    async def aclose(self) -> None:
        await self.wire.aclose()


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
