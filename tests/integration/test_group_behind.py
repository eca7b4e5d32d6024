"""What a consumer group still owes, asked of a real Redis: what the outbox and the
reliable-message runs wait on before they read the stores for the verdict."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from app.cluster import ClusterInfo
from collectors.targets import RedisTarget
from scenarios.kit.clients import behind, redis_client

STREAM = "coordscope:test:behind:events"


async def test_a_group_owes_what_it_has_not_read_or_not_acknowledged(cluster: ClusterInfo) -> None:
    r = redis_client(RedisTarget.from_url(cluster.redis_targets()[0].url))
    try:
        await r.delete(STREAM)
        with pytest.raises(redis_errors.ResponseError):
            await behind(r, STREAM, "b")  # no stream at all
        first = await r.xadd(STREAM, {"id": "o1"})
        assert await behind(r, STREAM, "b") == "no consumer group b"
        await r.xgroup_create(STREAM, "b", id="0")
        await r.xadd(STREAM, {"id": "o2"})
        owed = await behind(r, STREAM, "b")
        assert owed.startswith("group b has not read up to ")
        read = await r.xreadgroup("b", "B-1", {STREAM: ">"}, count=10)
        assert len(read[0][1]) == 2
        assert await behind(r, STREAM, "b") == "2 entr(ies) read by group b and not acknowledged"
        await r.xack(STREAM, "b", first)
        assert await behind(r, STREAM, "b") == "1 entr(ies) read by group b and not acknowledged"
        await r.xack(STREAM, "b", read[0][1][1][0])
        assert await behind(r, STREAM, "b") == ""
    finally:
        await r.delete(STREAM)
        await r.aclose()
