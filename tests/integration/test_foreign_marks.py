"""Idempotency records that coordscope did not write show as marks, never as held locks.

Powertools for AWS Lambda (Python) runs for real against redis-1, its handler
held mid-call so the store is read while the call is in progress. node-idempotency
is a Node.js library (npm is not available to test runs): its commands are
replayed byte for byte as MONITOR captured them from @node-idempotency/core 1.0.11
with @node-idempotency/storage-adapter-redis 1.0.2 (node-redis 4.7.1, node 20) on
redis-server 7.0.15, driven by ``tests/tools/node_idempotency_capture.js``
through ``python -m tests.tools.capture_marks node``.

Each test checks the recogniser on a record read back with redis-py, then what
the state shows: the mark with its state, and no lock under the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import pytest
import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer

from app.cluster import ClusterInfo
from collectors.layouts.facts import AuxiliaryFact
from collectors.layouts.idempotency import auxiliary, recognise
from collectors.records import KeyRecord
from collectors.state import State
from tests.conftest import observing, redis_client, until, wait_until
from tests.tools.capture_marks import FAIL, GATE, charge
from tests.tools.capture_marks import LambdaContextStandIn as LambdaContext

pytestmark = pytest.mark.filterwarnings(
    # CachePersistenceLayer is an alias of the class Powertools 3.x marks for renaming in 4.0
    "ignore:RedisCachePersistenceLayer will be removed:DeprecationWarning"
)


def idempotent_charge(client: redis.Redis) -> Any:
    """``charge`` wrapped as the Powertools docs show, on a Redis client of ours."""
    config = IdempotencyConfig(event_key_jmespath="order_id", payload_validation_jmespath="amount")
    return idempotent(config=config, persistence_store=CachePersistenceLayer(client=client))(charge)


def read_record(client: redis.Redis, key: str) -> KeyRecord:
    """The key as the keyspace collector would hand it to the recognisers."""
    kind = client.type(key).decode()
    pttl = client.pttl(key)
    value = client.get(key) if kind == "string" else None
    fields = client.hgetall(key) if kind == "hash" else {}
    return KeyRecord(
        node="redis-1",
        raw_key=key.encode(),
        type=kind,
        ttl_ms=pttl if pttl >= 0 else None,
        read_at_ms=int(time.time() * 1000),
        value=value,
        fields=fields,
        size=len(value) if value is not None else len(fields),
    )


def marks(st: State, key: str) -> list[Any]:
    return [m for m in st.entities("mark") if m.key == key]


def locks(st: State, key: str) -> list[Any]:
    return [lk for lk in st.entities("lock") if lk.name == key]


def mark_state(st: State, key: str) -> str | None:
    found = marks(st, key)
    return found[0].state if len(found) == 1 else None


async def the_one_key(client: redis.Redis, pattern: str) -> str:
    found: list[bytes] = []

    def appeared() -> bool:
        found[:] = list(client.scan_iter(match=pattern))
        return len(found) == 1

    await asyncio.to_thread(wait_until, appeared, 5, f"one key matching {pattern}")
    return found[0].decode()


@contextlib.asynccontextmanager
async def released(call: asyncio.Task[Any]) -> Any:
    """However the test ends, let the held handler finish (it waits at most 10 s)."""
    try:
        yield
    finally:
        GATE.set()
        with contextlib.suppress(Exception):
            await call


# ------------------------------------------------------------------ Powertools, for real


async def test_powertools_in_progress_then_completed(
    cluster: ClusterInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "payments-fn")
    client = redis_client(cluster)
    GATE.clear()
    FAIL.clear()
    async with observing(cluster) as bus:
        handler = idempotent_charge(client)
        event = {"order_id": "o-7", "amount": 1250}
        call = asyncio.create_task(asyncio.to_thread(handler, event, LambdaContext()))
        async with released(call):
            key = await the_one_key(client, "payments-fn.*")
            assert re.fullmatch(r"payments-fn\.tests\.tools\.capture_marks\.charge#[0-9a-f]{32}", key)

            rec = read_record(client, key)
            direct = recognise(rec)
            assert direct is not None and (direct.layout, direct.state) == ("powertools", "IN_PROGRESS")
            assert direct.fingerprint is not None and direct.owner is None
            assert direct.lease_until_ms is not None and direct.lease_until_ms > rec.read_at_ms
            assert rec.ttl_ms is not None and 3_590_000 < rec.ttl_ms <= 3_600_000

            # a duplicate while the first is running is refused and changes nothing
            with pytest.raises(IdempotencyAlreadyInProgressError):
                await asyncio.to_thread(handler, event, LambdaContext())

            await until(bus, lambda st: mark_state(st, key) == "IN_PROGRESS", "the in-progress mark")
            (mark,) = marks(bus.state, key)
            assert (mark.layout, mark.owner) == ("powertools", None)
            assert (mark.lease_expires_at_ms, mark.fingerprint) == (direct.lease_until_ms, direct.fingerprint)
            assert mark.ttl_ms is not None
            assert locks(bus.state, key) == []

            GATE.set()
            assert (await call)["statusCode"] == 200

        done = recognise(read_record(client, key))
        assert done is not None and (done.state, done.response) == ("COMPLETED", "200")
        await until(bus, lambda st: mark_state(st, key) == "COMPLETED", "the completed mark")
        (mark,) = marks(bus.state, key)
        assert mark.response == "200" and mark.lease_expires_at_ms is None
        assert locks(bus.state, key) == []
    client.close()


async def test_powertools_failed_call_leaves_nothing(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    GATE.clear()
    FAIL.set()
    async with observing(cluster) as bus:
        call = asyncio.create_task(
            asyncio.to_thread(idempotent_charge(client), {"order_id": "o-8", "amount": 5}, LambdaContext())
        )
        async with released(call):
            key = await the_one_key(client, "*charge#*")
            direct = recognise(read_record(client, key))
            assert direct is not None and direct.state == "IN_PROGRESS"
            await until(bus, lambda st: mark_state(st, key) == "IN_PROGRESS", "the in-progress mark")
            assert locks(bus.state, key) == []
            GATE.set()
            with pytest.raises(RuntimeError, match="card declined"):
                await call
        assert client.exists(key) == 0  # Powertools deletes the record so a retry runs again
        await until(bus, lambda st: not marks(st, key), "the mark to go")
        assert locks(bus.state, key) == []
    FAIL.clear()
    client.close()


async def test_powertools_orphan_is_taken_over_behind_a_helper_lock_key(cluster: ClusterInfo) -> None:
    """An invocation whose Lambda time ran out leaves INPROGRESS behind; the next call
    takes it over, writing ``<key>:lock`` = ``True`` (EX 10, never deleted) first."""
    client = redis_client(cluster)
    GATE.clear()
    FAIL.clear()
    handler = idempotent_charge(client)
    event = {"order_id": "o-9", "amount": 7}
    async with observing(cluster) as bus:
        first = asyncio.create_task(asyncio.to_thread(handler, event, LambdaContext(remaining_ms=300)))
        async with released(first):
            key = await the_one_key(client, "*charge#*")
            old_lease = lease_of(client, key)
            await asyncio.to_thread(wait_until, lambda: time.time() * 1000 > old_lease, 5, "the lease to end")
            orphan = recognise(read_record(client, key))
            assert orphan is not None and orphan.state == "IN_PROGRESS"  # the store still says so

            second = asyncio.create_task(asyncio.to_thread(handler, event, LambdaContext()))
            async with released(second):
                await asyncio.to_thread(
                    wait_until, lambda: lease_of(client, key) > old_lease, 5, "the take-over"
                )
                new_lease = lease_of(client, key)
                helper = read_record(client, key + ":lock")
                assert (helper.value, helper.type, recognise(helper)) == (b"True", "string", None)
                assert helper.ttl_ms is not None and helper.ttl_ms <= 10_000
                assert auxiliary(helper) == AuxiliaryFact(library="powertools", role="orphan take-over lock")

                def taken_over(st: State) -> bool:
                    found = marks(st, key)
                    seen_helper = st.record("redis-1", key + ":lock") is not None
                    return seen_helper and len(found) == 1 and found[0].lease_expires_at_ms == new_lease

                await until(bus, taken_over, "the taken-over mark and its helper key")
                assert mark_state(bus.state, key) == "IN_PROGRESS"
                assert marks(bus.state, key + ":lock") == []
                # the helper guards the take-over for 10 s: it is not who holds the record
                assert locks(bus.state, key) == locks(bus.state, key + ":lock") == []
    client.close()


def lease_of(client: redis.Redis, key: str) -> int:
    mark = recognise(read_record(client, key))
    return mark.lease_until_ms if mark is not None and mark.lease_until_ms is not None else 0


# ------------------------------------------------------------------ node-idempotency, replayed

NODE_KEY = "node-idempotency:POST:/charges:8e03978e-40d5-43e8-bc93-6894a57f9324"
NODE_FP = b"4bd6f3396942d7e9a9bcd5e3bc7e3e514f3364e1d51dbd93fb3474db4cac1cd8"
NODE_DECLINED_KEY = "node-idempotency:POST:/charges:c0ffee00-0000-4000-8000-000000000042"
NODE_DECLINED_FP = b"e93a26e71db22d7d50360a6fa04305bde4d3cac190ceb3a9250e9d7dd7920fa6"


async def test_node_idempotency_in_progress_then_complete(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus:
        # onRequest: the claim
        in_progress = b'{"status":"IN_PROGRESS","fingerPrint":"' + NODE_FP + b'"}'
        assert client.execute_command("SET", NODE_KEY, in_progress, "PX", "86400000", "NX")
        direct = recognise(read_record(client, NODE_KEY))
        assert direct is not None and (direct.layout, direct.state) == ("node-idempotency", "IN_PROGRESS")
        await until(bus, lambda st: mark_state(st, NODE_KEY) == "IN_PROGRESS", "the in-progress mark")
        (mark,) = marks(bus.state, NODE_KEY)
        assert mark.layout == "node-idempotency" and mark.fingerprint == NODE_FP.decode()
        assert locks(bus.state, NODE_KEY) == []

        # a duplicate while in progress: refused SET NX, then GET (no keyspace event)
        assert client.execute_command("SET", NODE_KEY, in_progress, "PX", "86400000", "NX") is None
        client.execute_command("GET", NODE_KEY)

        # onResponse with the express plugin's shape of a 201 answer
        complete = (
            b'{"status":"COMPLETE","fingerPrint":"' + NODE_FP + b'","response":{"additional":'
            b'{"statusCode":201},"body":{"id":"ch_3QkL9x","status":"succeeded","amount":1250}}}'
        )
        client.execute_command("SET", NODE_KEY, complete, "PX", "86400000")
        done = recognise(read_record(client, NODE_KEY))
        assert done is not None and (done.state, done.response) == ("COMPLETED", "201")
        await until(bus, lambda st: mark_state(st, NODE_KEY) == "COMPLETED", "the completed mark")
        (mark,) = marks(bus.state, NODE_KEY)
        assert mark.response == "201" and mark.owner is None
        assert locks(bus.state, NODE_KEY) == []
    client.close()


async def test_node_idempotency_error_answer_is_a_completed_mark(cluster: ClusterInfo) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus:
        claim = b'{"status":"IN_PROGRESS","fingerPrint":"' + NODE_DECLINED_FP + b'"}'
        client.execute_command("SET", NODE_DECLINED_KEY, claim, "PX", "86400000", "NX")
        declined = (
            b'{"status":"COMPLETE","fingerPrint":"' + NODE_DECLINED_FP + b'","response":{"additional":'
            b'{"statusCode":402},"error":{"message":"card declined","code":"card_declined"}}}'
        )
        client.execute_command("SET", NODE_DECLINED_KEY, declined, "PX", "86400000")
        direct = recognise(read_record(client, NODE_DECLINED_KEY))
        assert direct is not None and (direct.state, direct.response) == ("COMPLETED", "402")
        assert direct.detail["outcome"] == "error"
        await until(bus, lambda st: mark_state(st, NODE_DECLINED_KEY) == "COMPLETED", "the completed mark")
        (mark,) = marks(bus.state, NODE_DECLINED_KEY)
        assert mark.response == "402"
        assert locks(bus.state, NODE_DECLINED_KEY) == []
    client.close()
