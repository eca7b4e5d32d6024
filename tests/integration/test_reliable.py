"""txn-reliable-message end to end: a broker process over Redis, service A over one real
PostgreSQL, consumer B over the other, real SIGKILLs.

Every expected exit status from the CLI, with what the verdict says; nothing left behind
(no key under the run's ``rmq`` prefix, no service registration, no schema); and, as a
viewer of the store sees it, a half message kept field for field as
:mod:`collectors.layouts.messaging` documents it while the check-backs find its
transaction open, then delivered once A commits — its journey followed from its HALF to
B's effect."""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

import pytest
from redis.asyncio import Redis as AsyncRedis

from app.cluster import ClusterInfo, LocalCluster
from app.core import environment
from collectors.journeys import journeys
from collectors.layouts import messaging
from collectors.layouts.facts import MessageFact
from collectors.records import KeyRecord
from scenarios.runner import Runner
from tests.conftest import settings_for
from tests.tools.cli_runs import judged, leftovers

SCENARIO = "txn-reliable-message"
HASH_FIELDS = {
    "state", "topic", "producer", "body", "checks", "max_checks", "half_ms", "next_check_ms", "last_answer",
}  # fmt: skip


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ([], [], 0, "held: 7 order(s) committed by A, each applied once by B; 1 not committed, none applied"),
        (
            [],
            ["producer-crash-after-half"],
            0,
            "o3: 2 check-back(s): no answer (refused), ROLLBACK → ROLLED_BACK",
        ),
        ([], ["answer-unknown"], 0, "1 delivered only by a check-back (o3)"),
        ([], ["lost-commit"], 0, "o3: 1 check-back(s): COMMIT → COMMITTED"),
        ([], ["consumer-fail"], 0, "B skipped 1 redelivery(ies) by their mark: o3"),
        (["dedup=off"], ["consumer-fail"], 1, "B applied o3 twice: redelivered, it was applied again"),
        (
            ["max_checks=2"],
            ["answer-unknown"],
            1,
            "A committed order o3 but B never applied it: the broker discarded",
        ),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: list[str], faults: list[str], status: int, says: str
) -> None:
    run_id = judged(cluster, SCENARIO, params, faults, status, says)
    assert leftovers(cluster, run_id, messaging.rmq_prefix(run_id) + "*") == []


async def _half_after_a_check(store: AsyncRedis, key: str, timeout: float) -> dict[bytes, bytes]:
    """The message's hash once it has been checked back and is still HALF."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = cast(dict[bytes, bytes], await store.hgetall(key))
        if fields.get(b"state") == b"HALF" and int(fields.get(b"checks", b"0")) >= 1:
            return fields
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {key} HALF after a check")


async def test_a_half_message_is_kept_as_documented_then_delivered_by_a_check_back(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    runner = Runner(environment(settings_for(cluster), local_cluster))
    params = {"orders": "2", "fault_at": "1", "refuse_every": "0"}
    started = await runner.start(SCENARIO, params, ["answer-unknown"])
    store = AsyncRedis(port=cluster.masters[0].port)
    try:
        key = messaging.half_key(started.id, "o1")
        fields = await _half_after_a_check(store, key, 15)
        text = {k.decode(): v.decode() for k, v in fields.items()}
        assert set(text) == HASH_FIELDS
        assert (text["topic"], text["producer"], text["max_checks"]) == ("orders", "A", "5")
        assert text["last_answer"] == "UNKNOWN"  # A's transaction still holds its record
        assert json.loads(text["body"]) == {"order": "o1", "amount": 10}
        score = await store.zscore(messaging.half_schedule_key(started.id), "o1")
        assert score == int(text["next_check_ms"]) > int(text["half_ms"])
        record = KeyRecord(
            node="redis-1", raw_key=key.encode(), type="hash", ttl_ms=None, read_at_ms=0, fields=fields
        )
        fact = messaging.recognise(record)
        assert isinstance(fact, MessageFact)
        assert (fact.kind, fact.state, fact.max_tries) == ("half message", "HALF", 5)
        assert fact.tries >= 1 and fact.next_ms == int(text["next_check_ms"]) and fact.last == "UNKNOWN"
        run = await runner.wait(started.id)
    finally:
        await store.aclose()
        await runner.close()
    assert run.verdict is not None and run.verdict.holds, (run.error, run.verdict)
    (o1,) = [j for j in journeys(run.stored)[0] if j.msg == "o1"]
    whats = [(s.actor, s.what) for s in o1.steps]
    half, committed = whats.index(("broker", "half")), whats.index(("A", "committed"))
    published, applied = whats.index(("broker", "published")), whats.index(("B", "applied"))
    assert half < committed < published < applied, o1.path
    checks = [s.note for s in o1.steps if (s.actor, s.what) == ("broker", "check")]
    assert checks[0] == "o1: check 1/5: UNKNOWN (its local transaction is still open, holding the record)"
    assert checks[-1].startswith("o1: check ") and ": COMMIT (committed)" in checks[-1], checks
    assert not o1.bad, o1.path
    assert leftovers(cluster, started.id, messaging.rmq_prefix(started.id) + "*") == []
