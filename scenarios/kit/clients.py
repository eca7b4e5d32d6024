"""The clients a run uses to reach its stores."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collectors.targets import RedisTarget


def redis_client(t: RedisTarget) -> Redis:
    """A scenario's client: no silent retries — a lock service that is down must show in
    the history as errors when they happen, not as one call that hangs through the outage."""
    return Redis(
        **t.connection(),
        protocol=2,
        socket_connect_timeout=1.0,
        socket_timeout=3.0,
        retry=Retry(NoBackoff(), 0),
    )
