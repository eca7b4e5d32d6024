"""The shared pipelined connection of a service's hot path, on a real Redis: concurrent
callers each get their own reply, a late reply never reaches the wrong caller, a lost
connection is opened again, errors are redis-py's."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis import exceptions as redis_errors

from app.cluster import ClusterInfo
from collectors.targets import RedisTarget
from scenarios.idempotency.marks import Marks, fingerprint, mark_key
from scenarios.kit.wire import Wire


def target(info: ClusterInfo) -> RedisTarget:
    return RedisTarget(id="redis-2", host="127.0.0.1", port=info.member("redis-2").port)


async def test_concurrent_callers_each_get_their_own_reply(cluster: ClusterInfo) -> None:
    wire = Wire(target(cluster))
    try:

        async def one(i: int) -> tuple[int, bytes]:
            await wire.call("SET", f"coordscope:test:wire:{i}", f"value-{i}")
            return i, await wire.call("GET", f"coordscope:test:wire:{i}")

        replies = await asyncio.gather(*(one(i) for i in range(300)))
        assert all(value == f"value-{i}".encode() for i, value in replies)
        with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE"):
            await wire.call("LPUSH", "coordscope:test:wire:1", "x")
    finally:
        await wire.aclose()


async def test_a_late_reply_never_reaches_the_next_caller(cluster: ClusterInfo) -> None:
    wire = Wire(target(cluster), timeout_s=0.3)
    try:
        with pytest.raises(redis_errors.TimeoutError):
            await wire.call("BLPOP", "coordscope:test:wire:nothing", 1)  # answers after 1 s
        wire.timeout_s = 3.0
        # Redis answers the PING after the BLPOP's nil; the nil goes to nobody, the PONG to us
        assert await wire.call("PING") == b"PONG"
        assert await wire.call("ECHO", "mine") == b"mine"
    finally:
        await wire.aclose()


async def test_a_lost_connection_is_opened_again(cluster: ClusterInfo) -> None:
    wire = Wire(target(cluster))
    admin = redis.Redis(port=cluster.member("redis-2").port)
    try:
        await wire.call("CLIENT", "SETNAME", "coordscope-wire-test")
        killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1

        async def until_it_breaks() -> None:
            for _ in range(50):  # the kill reaches us with the next read
                await wire.call("PING")
                await asyncio.sleep(0.01)

        with pytest.raises(redis_errors.ConnectionError):
            await until_it_breaks()
        assert await wire.call("PING") == b"PONG"  # a new connection
    finally:
        await wire.aclose()
        admin.close()


async def test_marks_survive_an_emptied_script_cache(cluster: ClusterInfo) -> None:
    marks = Marks(target(cluster), "pay-1", lease_ms=1000, ttl_ms=5000)
    admin = redis.Redis(port=cluster.member("redis-2").port)
    key = mark_key("run-wire", "order-1")
    try:
        assert (await marks.claim(key, fingerprint("order-1", 5), "r1")).outcome == "claimed"
        admin.script_flush()  # what a restarted node looks like to a script caller
        again = await marks.claim(key, fingerprint("order-1", 5), "r2")
        assert again.outcome == "in-flight" and again.a == "pay-1"
        assert (await marks.claim(key, fingerprint("order-1", 6), "r3")).outcome == "mismatch"
        assert not await marks.complete(key, "r0", 200, "{}")  # another request's claim: not ours
        assert await marks.complete(key, "r1", 200, '{"charge_id": 1}')
        replay = await marks.claim(key, fingerprint("order-1", 5), "r4")
        assert replay == ("replay", "200", '{"charge_id": 1}')
    finally:
        admin.delete(key)
        await marks.aclose()
        admin.close()


async def test_a_command_that_cannot_be_sent_takes_no_place_in_line(cluster: ClusterInfo) -> None:
    wire = Wire(target(cluster))
    try:
        await wire.call("SET", "coordscope:test:wire:a", "one")
        await wire.call("SET", "coordscope:test:wire:b", "two")
        with pytest.raises(UnicodeEncodeError):
            await wire.call("GET", "\ud800")  # a lone surrogate: not encodable
        a, b = await asyncio.gather(
            wire.call("GET", "coordscope:test:wire:a"), wire.call("GET", "coordscope:test:wire:b")
        )
        assert (a, b) == (b"one", b"two")
    finally:
        await wire.aclose()
