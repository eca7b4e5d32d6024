"""Where an app instance keeps its users' sessions: in its own memory, as one opaque blob
per session in Redis (a container-coupled manager), or in Spring Session's Redis layout.

:class:`LocalStore` (``store=local`` and ``sticky``)
    a dict in the process: another instance knows nothing of it, a restart loses it.

:class:`ContainerStore` (``store=container``)
    what Tomcat's Redis valve does: the container serialises the whole session into
    one value only it can read — here ``CSC1`` and zlib-compressed JSON — under
    ``coordscope:session:{<run>}:container:<id>``, ``PX`` the idle timeout, rewritten
    on every request.

:class:`scenarios.sessions.spring.SpringStore` (``store=redis``)
    Spring Session's indexed repository: the keys, values and TTLs
    ``RedisIndexedSessionRepository`` (3.4+) writes, in its namespace
    ``coordscope:session:{<run>}``: the ``sessions:<id>`` hash (``creationTime``,
    ``lastAccessedTime``, ``maxInactiveInterval``, ``sessionAttr:<name>``, every value
    Java-serialised; TTL idle + 300 s), its ``sessions:expires:<id>`` shadow (TTL the
    idle timeout), the minute buckets ``expirations:<ms>`` and the principal index —
    so a Spring Session application pointed at that namespace shares these sessions.

Every store answers :meth:`Store.load` with ``None`` for a session that is missing,
expired or deleted, as Spring Session's ``findById`` does.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from collectors.layouts.coordscope import container_session_key

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

    async def touch(self, session_id: str, attrs: dict[str, str]) -> SessionData | None:
        """A request's read: the session, its ``lastAccessedTime`` moved to now and these
        attributes set — or None (missing, expired, deleted), untouched."""

    async def set_attributes(self, data: SessionData, names: set[str]) -> None:
        """Write these attributes of a session just touched (a removed one is deleted)."""

    async def delete(self, data: SessionData) -> None: ...

    async def rotate(self, data: SessionData, new_id: str) -> None:
        """Give the session a new id (at login): the old id's keys are gone after."""

    def held(self) -> int | None:
        """Sessions in this process's memory (None: they live in Redis)."""

    def keys(self, session_id: str) -> list[str]:
        """The keys that hold a session (none: it lives in a process's memory)."""

    def ttl_key(self, session_id: str) -> str | None:
        """The key whose expiry is the session's (None: no key)."""


async def touch_by_load(store: Store, session_id: str, attrs: dict[str, str]) -> SessionData | None:
    """``touch`` as a read, then a write (the stores whose session is one value)."""
    data = await store.load(session_id)
    if data is None:
        return None
    old, data.last_ms = data.last_ms, now_ms()
    data.attrs.update(attrs)
    await store.save(data, set(attrs), old_last_ms=old)
    return data


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

    async def touch(self, session_id: str, attrs: dict[str, str]) -> SessionData | None:
        return await touch_by_load(self, session_id, attrs)

    async def set_attributes(self, data: SessionData, names: set[str]) -> None:
        await self.save(data, names)

    async def delete(self, data: SessionData) -> None:
        self.sessions.pop(data.id, None)

    async def rotate(self, data: SessionData, new_id: str) -> None:
        self.sessions.pop(data.id, None)
        data.id = new_id
        await self.save(data, set(data.attrs), new=True)

    def held(self) -> int | None:
        now = now_ms()
        return sum(1 for s in self.sessions.values() if not s.expired(now))

    def keys(self, session_id: str) -> list[str]:
        return []

    def ttl_key(self, session_id: str) -> str | None:
        return None


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

    async def touch(self, session_id: str, attrs: dict[str, str]) -> SessionData | None:
        return await touch_by_load(self, session_id, attrs)

    async def set_attributes(self, data: SessionData, names: set[str]) -> None:
        await self.save(data, names)

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

    def keys(self, session_id: str) -> list[str]:
        return [self.key(session_id)]

    def ttl_key(self, session_id: str) -> str | None:
        return self.key(session_id)
