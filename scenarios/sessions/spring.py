"""Spring Session's indexed Redis layout, as ``RedisIndexedSessionRepository`` (3.4+) writes
it — the session run's ``store=redis`` (see :mod:`scenarios.sessions.stores` for the others).

Every value is Java-serialised (:mod:`collectors.layouts.javaser`), every key lives in the
namespace ``coordscope:session:{<run>}``, so a Spring Session application pointed at that
namespace shares these sessions; ``tests/integration/test_session_stores.py`` checks the
bytes against the ones captured from Spring Session.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import javaser
from collectors.layouts.coordscope import session_namespace
from collectors.layouts.sessions import ATTR_PREFIX, PRINCIPAL
from collectors.records import display
from scenarios.sessions.stores import GRACE_S, USER, SessionData, now_ms

TOUCH = """
-- KEYS: the session's hash, its shadow. ARGV: now (ms), lastAccessedTime (a Java Long),
-- the namespace, the bucket member (a Java String "expires:<id>"), then attribute/value pairs.
-- Returns {1 if touched, the hash as it was}: a session that is missing, deleted
-- (maxInactiveInterval 0), expired or unreadable is returned as read and not touched.
local fields = redis.call('HGETALL', KEYS[1])
local last, idle
for i = 1, #fields, 2 do
  if fields[i] == 'lastAccessedTime' then last = fields[i + 1] end
  if fields[i] == 'maxInactiveInterval' then idle = fields[i + 1] end
end
local function number(raw, n)  -- a Java Long (n = 8) or Integer (4): its last n bytes
  if not raw or #raw < n + 4 or string.sub(raw, 1, 4) ~= '\\172\\237\\0\\5' then return nil end
  local v = 0
  for i = #raw - n + 1, #raw do v = v * 256 + string.byte(raw, i) end
  return v
end
last, idle = number(last, 8), number(idle, 4)
local now = tonumber(ARGV[1])
if not last or not idle or idle <= 0 or idle >= 2147483648 or now - last >= idle * 1000 then
  return {0, fields}
end
local function bucket(expires)
  return ARGV[3] .. ':expirations:' .. string.format('%.0f', (math.floor(expires / 60000) + 1) * 60000)
end
local set = {'lastAccessedTime', ARGV[2]}
for i = 5, #ARGV do set[#set + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(set))
local old, new = bucket(last + idle * 1000), bucket(now + idle * 1000)
if old ~= new then redis.call('SREM', old, ARGV[4]) end
redis.call('APPEND', KEYS[2], '')
redis.call('EXPIRE', KEYS[2], idle)
redis.call('EXPIRE', KEYS[1], idle + 300)
redis.call('SADD', new, ARGV[4])
return {1, fields}
"""
"""A request's touch in Spring Session's layout, in one round trip: the writes of ``save``
(``lastAccessedTime`` and the attributes) and of ``onExpirationUpdated`` (the minute bucket,
the shadow's and the hash's TTLs), only for a session that is live by its own fields. The
bucket keys are named from the namespace, in the session's slot (the run's hash tag)."""


def expiry_bucket(expires_ms: int) -> int:
    """Spring Session's minute bucket: the minute after the session expires."""
    return (expires_ms // 60_000 + 1) * 60_000


class SpringStore:
    def __init__(self, redis: Redis, run_id: str) -> None:
        self.redis = redis
        self.ns = session_namespace(run_id)
        self._touch = redis.register_script(TOUCH)

    def hash_key(self, session_id: str) -> str:
        return f"{self.ns}:sessions:{session_id}"

    def expires_key(self, session_id: str) -> str:
        return f"{self.ns}:sessions:expires:{session_id}"

    def bucket_key(self, expires_ms: int) -> str:
        return f"{self.ns}:expirations:{expiry_bucket(expires_ms)}"

    def index_key(self, user: str) -> str:
        return f"{self.ns}:index:{PRINCIPAL}:{user}"

    async def load(self, session_id: str) -> SessionData | None:
        data = _parse(session_id, await self.redis.hgetall(self.hash_key(session_id)))
        return None if data is None or data.expired(now_ms()) else data

    async def touch(self, session_id: str, attrs: dict[str, str]) -> SessionData | None:
        """One round trip: :data:`TOUCH` reads the hash and, unless the session is expired or
        deleted, sends what ``save`` + ``onExpirationUpdated`` send for a touch."""
        now = now_ms()
        pairs: list[str | bytes] = []
        for name, value in attrs.items():
            pairs += [ATTR_PREFIX + name, javaser.encode_string(value)]
        touched, flat = await self._touch(
            keys=[self.hash_key(session_id), self.expires_key(session_id)],
            args=[
                now,
                javaser.encode_long(now),
                self.ns,
                javaser.encode_string(f"expires:{session_id}"),
                *pairs,
            ],
        )
        data = _parse(session_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        if not touched or data is None or data.expired(now):
            return None
        data.last_ms = now
        data.attrs.update(attrs)
        return data

    async def set_attributes(self, data: SessionData, names: set[str]) -> None:
        present = {ATTR_PREFIX + n: javaser.encode_string(data.attrs[n]) for n in names if n in data.attrs}
        gone = [ATTR_PREFIX + n for n in names if n not in data.attrs]
        pipe = self.redis.pipeline(transaction=True)
        if present:
            pipe.hset(self.hash_key(data.id), mapping=present)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self.hash_key(data.id), *gone)
        await pipe.execute()

    async def save(
        self, data: SessionData, changed: set[str], new: bool = False, old_last_ms: int = 0
    ) -> None:
        fields: dict[str, bytes] = {"lastAccessedTime": javaser.encode_long(data.last_ms)}
        if new:
            fields["creationTime"] = javaser.encode_long(data.created_ms)
            fields["maxInactiveInterval"] = javaser.encode_int(data.idle_s)
        for name in (set(data.attrs) if new else changed) & set(data.attrs):
            fields[ATTR_PREFIX + name] = javaser.encode_string(data.attrs[name])
        if USER in changed and data.user:
            fields[ATTR_PREFIX + PRINCIPAL] = javaser.encode_string(data.user)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.hash_key(data.id), mapping=fields)  # type: ignore[arg-type]
        if removed := [ATTR_PREFIX + n for n in changed if n not in data.attrs]:
            pipe.hdel(self.hash_key(data.id), *removed)  # removeAttribute: the field goes
        if USER in changed and data.user:
            pipe.sadd(self.index_key(data.user), javaser.encode_string(data.id))
        self._expiry(pipe, data, None if new else old_last_ms)
        await pipe.execute()

    def _expiry(self, pipe: object, data: SessionData, old_last_ms: int | None) -> None:
        """What ``onExpirationUpdated`` sends: the session moves to its new minute bucket,
        its shadow gets the idle timeout, the hash five minutes more."""
        p = pipe  # a redis pipeline (typed loosely: redis-py's stubs type it per client)
        member = javaser.encode_string(f"expires:{data.id}")
        expires = data.last_ms + data.idle_s * 1000
        if old_last_ms is not None and expiry_bucket(old_last_ms + data.idle_s * 1000) != expiry_bucket(
            expires
        ):
            p.srem(self.bucket_key(old_last_ms + data.idle_s * 1000), member)  # type: ignore[attr-defined]
        p.append(self.expires_key(data.id), "")  # type: ignore[attr-defined]
        p.expire(self.expires_key(data.id), data.idle_s)  # type: ignore[attr-defined]
        p.expire(self.hash_key(data.id), data.idle_s + GRACE_S)  # type: ignore[attr-defined]
        p.sadd(self.bucket_key(expires), member)  # type: ignore[attr-defined]

    async def delete(self, data: SessionData) -> None:
        """``deleteById``: out of the index and its bucket, the shadow deleted, the hash kept
        five minutes with ``maxInactiveInterval`` 0 (how Spring tells deleted from expired)."""
        member = javaser.encode_string(f"expires:{data.id}")
        expires = data.last_ms + data.idle_s * 1000
        pipe = self.redis.pipeline(transaction=True)
        if data.user:
            pipe.srem(self.index_key(data.user), javaser.encode_string(data.id))
        pipe.srem(self.bucket_key(expires), member)
        pipe.delete(self.expires_key(data.id))
        pipe.hset(self.hash_key(data.id), "maxInactiveInterval", javaser.encode_int(0))
        pipe.expire(self.hash_key(data.id), GRACE_S)
        pipe.sadd(self.bucket_key(data.last_ms), member)
        await pipe.execute()

    async def rotate(self, data: SessionData, new_id: str) -> None:
        """``changeSessionId``: ``RENAME`` of the hash and of its shadow, the index and the
        bucket moved to the new id."""
        old = data.id
        expires = data.last_ms + data.idle_s * 1000
        await self.redis.rename(self.hash_key(old), self.hash_key(new_id))
        with contextlib.suppress(redis_errors.ResponseError):  # the shadow expired meanwhile:
            await self.redis.rename(self.expires_key(old), self.expires_key(new_id))  # as Spring
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.bucket_key(expires), javaser.encode_string(f"expires:{old}"))
        pipe.sadd(self.bucket_key(expires), javaser.encode_string(f"expires:{new_id}"))
        if data.user:
            pipe.srem(self.index_key(data.user), javaser.encode_string(old))
            pipe.sadd(self.index_key(data.user), javaser.encode_string(new_id))
        await pipe.execute()
        data.id = new_id

    def held(self) -> int | None:
        return None

    def keys(self, session_id: str) -> list[str]:
        return [self.hash_key(session_id), self.expires_key(session_id)]

    def ttl_key(self, session_id: str) -> str | None:
        return self.expires_key(session_id)

    async def clean_expired(self, at_ms: int) -> int:
        """Spring's minute job (``cleanExpiredSessions``, cron ``0 * * * * *``): the bucket of
        the minute that just ended is deleted and each session listed in it is *read* (an
        ``EXISTS`` of its shadow), so Redis expires it now rather than when its sampled
        expiry cycle finds it. Returns how many were listed."""
        bucket = f"{self.ns}:expirations:{at_ms // 60_000 * 60_000}"
        members = await self.redis.smembers(bucket)
        await self.redis.delete(bucket)
        for member in members:
            name = javaser.decode(member if isinstance(member, bytes) else member.encode())
            if isinstance(name, str) and name.startswith("expires:"):
                await self.redis.exists(f"{self.ns}:sessions:{name}")
        return len(members)


def _parse(session_id: str, raw: dict[Any, Any]) -> SessionData | None:
    """A Spring session hash as read (``HGETALL``), or None when it is not one we can use."""
    if not raw:
        return None
    values = {_text(k): javaser.decode(v if isinstance(v, bytes) else v.encode()) for k, v in raw.items()}
    created, last, idle = (values.get(n) for n in ("creationTime", "lastAccessedTime", "maxInactiveInterval"))
    if not all(isinstance(v, int) for v in (created, last, idle)):
        return None  # not a session this store can use: as good as none
    return SessionData(
        id=session_id,
        created_ms=int(created),  # type: ignore[arg-type]
        last_ms=int(last),  # type: ignore[arg-type]
        idle_s=int(idle),  # type: ignore[arg-type]
        attrs={
            name[len(ATTR_PREFIX) :]: str(value)
            for name, value in values.items()
            if name.startswith(ATTR_PREFIX) and value is not None and name != ATTR_PREFIX + PRINCIPAL
        },
    )


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else display(raw)
