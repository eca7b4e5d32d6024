"""Where an app instance keeps its users' sessions: in its own memory, as one opaque blob
per session in Redis (a container-coupled manager), or in Spring Session's Redis layout.

:class:`LocalStore` (``store=local`` and ``sticky``)
    a dict in the process: another instance knows nothing of it, a restart loses it.

:class:`ContainerStore` (``store=container``)
    what Tomcat's Redis valve does: the container serialises the whole session into
    one value only it can read — here ``CSC1`` and zlib-compressed JSON — under
    ``coordscope:session:{<run>}:container:<id>``, ``PX`` the idle timeout, rewritten
    on every request.

:class:`SpringStore` (``store=redis``)
    Spring Session's indexed repository, command for command as
    ``RedisIndexedSessionRepository`` (3.4+) sends them, in its namespace
    ``coordscope:session:{<run>}``: the ``sessions:<id>`` hash (``creationTime``,
    ``lastAccessedTime``, ``maxInactiveInterval``, ``sessionAttr:<name>``, every value
    Java-serialised; TTL idle + 300 s), its ``sessions:expires:<id>`` shadow (TTL the
    idle timeout), the minute buckets ``expirations:<ms>`` and the principal index —
    so a Spring Session application pointed at that namespace shares these sessions.

Every store answers :meth:`Store.load` with ``None`` for a session that is missing,
expired or deleted, as Spring Session's ``findById`` does.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import javaser
from collectors.layouts.coordscope import container_session_key, session_namespace
from collectors.layouts.sessions import ATTR_PREFIX, PRINCIPAL
from collectors.records import display

STORES = ("redis", "container", "sticky", "local")
GRACE_S = 300
"""Spring Session keeps the hash this long past the idle timeout (to read it on expiry)."""
BLOB_MAGIC = b"CSC1"
USER = "user"
CART = "cart"
SERVED_BY = "servedBy"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class SessionData:
    id: str
    created_ms: int
    last_ms: int
    idle_s: int
    attrs: dict[str, str] = field(default_factory=dict)

    def expired(self, at_ms: int) -> bool:
        return self.idle_s <= 0 or at_ms - self.last_ms >= self.idle_s * 1000

    @property
    def user(self) -> str | None:
        return self.attrs.get(USER)

    @property
    def cart(self) -> list[str]:
        return [item for item in self.attrs.get(CART, "").split(",") if item]


class Store(Protocol):
    async def load(self, session_id: str) -> SessionData | None: ...

    async def save(
        self, data: SessionData, changed: set[str], new: bool = False, old_last_ms: int = 0
    ) -> None:
        """Write what changed: on a new session everything, else ``lastAccessedTime`` and
        the attributes named in ``changed``."""

    async def delete(self, data: SessionData) -> None: ...

    async def rotate(self, data: SessionData, new_id: str) -> None:
        """Give the session a new id (at login): the old id's keys are gone after."""

    def held(self) -> int | None:
        """Sessions in this process's memory (None: they live in Redis)."""


class LocalStore:
    def __init__(self) -> None:
        self.sessions: dict[str, SessionData] = {}

    async def load(self, session_id: str) -> SessionData | None:
        data = self.sessions.get(session_id)
        if data is None:
            return None
        if data.expired(now_ms()):
            del self.sessions[session_id]
            return None
        return SessionData(**{**asdict(data), "attrs": dict(data.attrs)})

    async def save(
        self, data: SessionData, changed: set[str], new: bool = False, old_last_ms: int = 0
    ) -> None:
        self.sessions[data.id] = SessionData(**{**asdict(data), "attrs": dict(data.attrs)})

    async def delete(self, data: SessionData) -> None:
        self.sessions.pop(data.id, None)

    async def rotate(self, data: SessionData, new_id: str) -> None:
        self.sessions.pop(data.id, None)
        data.id = new_id
        await self.save(data, set(data.attrs), new=True)

    def held(self) -> int | None:
        now = now_ms()
        return sum(1 for s in self.sessions.values() if not s.expired(now))


def encode_blob(data: SessionData) -> bytes:
    """The container's own serialisation: nobody else is meant to read it."""
    return BLOB_MAGIC + zlib.compress(json.dumps(asdict(data), separators=(",", ":")).encode())


def decode_blob(raw: bytes) -> SessionData | None:
    if not raw.startswith(BLOB_MAGIC):
        return None
    try:
        fields = json.loads(zlib.decompress(raw[len(BLOB_MAGIC) :]))
        return SessionData(
            id=str(fields["id"]),
            created_ms=int(fields["created_ms"]),
            last_ms=int(fields["last_ms"]),
            idle_s=int(fields["idle_s"]),
            attrs={str(k): str(v) for k, v in dict(fields["attrs"]).items()},
        )
    except (ValueError, KeyError, TypeError, zlib.error):
        return None


class ContainerStore:
    def __init__(self, redis: Redis, run_id: str) -> None:
        self.redis = redis
        self.run_id = run_id

    def key(self, session_id: str) -> str:
        return container_session_key(self.run_id, session_id)

    async def load(self, session_id: str) -> SessionData | None:
        raw = await self.redis.get(self.key(session_id))
        data = decode_blob(raw) if isinstance(raw, bytes) else None
        return None if data is None or data.expired(now_ms()) else data

    async def save(
        self, data: SessionData, changed: set[str], new: bool = False, old_last_ms: int = 0
    ) -> None:
        await self.redis.set(self.key(data.id), encode_blob(data), px=data.idle_s * 1000)

    async def delete(self, data: SessionData) -> None:
        await self.redis.delete(self.key(data.id))

    async def rotate(self, data: SessionData, new_id: str) -> None:
        old = self.key(data.id)
        data.id = new_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(old)
        pipe.set(self.key(new_id), encode_blob(data), px=data.idle_s * 1000)
        await pipe.execute()

    def held(self) -> int | None:
        return None


def expiry_bucket(expires_ms: int) -> int:
    """Spring Session's minute bucket: the minute after the session expires."""
    return (expires_ms // 60_000 + 1) * 60_000


class SpringStore:
    def __init__(self, redis: Redis, run_id: str) -> None:
        self.redis = redis
        self.ns = session_namespace(run_id)

    def hash_key(self, session_id: str) -> str:
        return f"{self.ns}:sessions:{session_id}"

    def expires_key(self, session_id: str) -> str:
        return f"{self.ns}:sessions:expires:{session_id}"

    def bucket_key(self, expires_ms: int) -> str:
        return f"{self.ns}:expirations:{expiry_bucket(expires_ms)}"

    def index_key(self, user: str) -> str:
        return f"{self.ns}:index:{PRINCIPAL}:{user}"

    async def load(self, session_id: str) -> SessionData | None:
        raw = await self.redis.hgetall(self.hash_key(session_id))
        if not raw:
            return None
        values = {_text(k): javaser.decode(v if isinstance(v, bytes) else v.encode()) for k, v in raw.items()}
        created, last, idle = (
            values.get(n) for n in ("creationTime", "lastAccessedTime", "maxInactiveInterval")
        )
        if not all(isinstance(v, int) for v in (created, last, idle)):
            return None  # not a session this store can use: as good as none
        data = SessionData(
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
        return None if data.expired(now_ms()) else data

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


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else display(raw)


def store_for(name: str, redis: Redis | None, run_id: str) -> Store:
    if name in ("local", "sticky"):
        return LocalStore()
    if redis is None:
        raise ValueError(f"store={name} keeps sessions in Redis: give --redis")
    return ContainerStore(redis, run_id) if name == "container" else SpringStore(redis, run_id)
