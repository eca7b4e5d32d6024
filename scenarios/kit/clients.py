"""The clients a run uses to reach its stores."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collectors.targets import RedisTarget


def text(value: object) -> str:
    """A reply's value as text (Redis answers bytes): decoded, an undecodable byte shown as
    U+FFFD rather than raising; anything else as ``str``."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redis_client(t: RedisTarget, timeout_s: float = 3.0) -> Redis:
    """A scenario's client: no silent retries — a lock service that is down must show in
    the history as errors when they happen, not as one call that hangs through the outage.
    ``timeout_s``: how long a reply may take (a connection, at most 1 s of it).

    On a node of a Redis Cluster: a cluster client seeded there, which sends each command
    to the primary of its key's slot and follows MOVED/ASK (typed as a ``Redis``: it has
    the same commands, and scenarios that cannot run on a cluster refuse before this)."""
    if t.cluster:
        cluster = RedisCluster(
            host=t.host,
            port=t.port,
            username=t.username,
            password=t.password,
            ssl=t.tls,
            protocol=2,
            socket_connect_timeout=min(1.0, timeout_s),
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cast(Redis, cluster)
    return Redis(
        **t.connection(),
        protocol=2,
        socket_connect_timeout=min(1.0, timeout_s),
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


async def behind(redis: Redis, stream: str, group: str) -> str:
    """What consumer group ``group`` of ``stream`` still owes: entries it has not read, or
    read and not acknowledged ("" when neither: a consumer acknowledges an entry once its
    effect is committed, so such a group has applied everything published). Raises
    :class:`redis.exceptions.ResponseError` when there is no such stream."""
    info = await redis.xinfo_stream(stream)
    groups = await redis.xinfo_groups(stream)
    found = next((g for g in groups if text(g.get("name", "")) == group), None)
    if found is None:
        return f"no consumer group {group}"
    last = text(info.get("last-generated-id", ""))
    if text(found.get("last-delivered-id", "")) != last:
        return f"group {group} has not read up to {last}"
    pending = int(found.get("pending") or 0)
    return f"{pending} entr(ies) read by group {group} and not acknowledged" if pending else ""
