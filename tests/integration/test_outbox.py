"""txn-outbox end to end: service A, the relay and two consumers as processes, two real
PostgreSQL servers and Redis.

Every expected exit status from the CLI, with what the verdict says (both relays, each
fault with the inbox, the relay's crash without it); nothing left behind (the stream,
service registrations, the schemas); and one message followed, in the stored history,
from A's commit through the relay's crash to B's inbox dropping its second delivery."""

from __future__ import annotations

import pytest

from app.cluster import ClusterInfo, LocalCluster
from collectors.layouts.messaging import outbox_stream_key
from tests.conftest import run_scenario
from tests.tools.cli_runs import judged, leftovers


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ([], [], 0, "held: 30 committed order(s), each applied exactly once by B"),
        (["relay=notify"], [], 0, "held: 30 committed order(s), each applied exactly once by B"),
        ([], ["relay-crash-after-publish"], 0, "redelivery(ies) skipped by B's inbox: o"),
        (["relay=notify"], ["relay-crash-after-publish"], 0, "relay crashed at"),
        (
            [],
            ["consumer-crash"],
            0,
            "B-2 claimed 1 pending entr(ies) of a consumer that died (XAUTOCLAIM): o",
        ),
        (["relay=notify"], ["broker-down"], 0, "relay round(s) failed and were retried"),
        ([], ["rollback"], 0, "held: 29 committed order(s), each applied exactly once by B; 1 rolled back"),
        (["inbox=off"], ["relay-crash-after-publish"], 1, "applied ×2"),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: list[str], faults: list[str], status: int, says: str
) -> None:
    run_id = judged(cluster, "txn-outbox", params, faults, status, says)
    assert leftovers(cluster, run_id, outbox_stream_key(run_id)) == []


async def test_a_message_is_followed_from_a_through_the_relay_crash_to_the_inbox(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    params = {"messages": "12", "fault_at": "4", "relay": "notify"}
    run = await run_scenario(cluster, local_cluster, "txn-outbox", ["relay-crash-after-publish"], **params)
    assert run.verdict is not None and run.verdict.holds, run.verdict
    ops = run.stored
    # on the run's time axis (each process's narration reaches the store in its own batches)
    journey = sorted((op for op in ops if op.data.get("msg") == "o4"), key=lambda op: op.t_ms)
    path = [(op.actor, op.src, op.f, op.data.get("tick")) for op in journey]
    ticks = [t for *_, t in path if t]
    # A commits it; the relay publishes it and dies before marking it sent
    assert ("A", "A", "order", "committed") in path and ticks.count("committed") == 1, path
    first = path.index(("relay", "relay", "publish", "published"))
    assert path[first + 1] == ("relay", "relay", "crash-point", None), path
    assert ("relay", "relay", "mark", "marked") not in path, path
    crash = next(op for op in ops if op.actor == "relay" and op.f == "crash")
    assert crash.data["source"] == "relay"
    # its next life publishes it again and marks it sent
    assert path.count(("relay", "relay#1", "publish", "published")) == 1, path
    assert ("relay", "relay#1", "mark", "marked") in path, path
    # B applied it once; the second delivery was dropped by the inbox
    assert ticks.count("applied") == 1 and ticks.count("duplicate") == 1, path
    reads = {op.f: op.data for op in ops if op.actor == "runner" and op.kind == "ok"}
    assert [m for _, m in reads["stream"]["entries"]].count("o4") == 2
    assert [r[0] for r in reads["effects"]["rows"]].count("o4") == 1
    assert sorted(r[0] for r in reads["inbox"]["rows"]) == sorted(f"o{n}" for n in range(1, 13))
    assert all(sent for _, sent, *_ in reads["outbox"]["rows"])


async def test_the_backlog_grows_while_the_broker_is_down_then_drains(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    params = {"messages": "30", "fault_at": "5", "fault_ms": "1500"}
    run = await run_scenario(cluster, local_cluster, "txn-outbox", ["broker-down"], **params)
    assert run.verdict is not None and run.verdict.holds, run.verdict
    ops = run.stored
    down = next(op for op in ops if op.actor == "nemesis" and op.f == "fault")
    up = next(op for op in ops if op.actor == "nemesis" and op.f == "heal")
    assert down.note.startswith("SIGSTOP redis-2"), down.note  # not the control node (redis-3)
    backlog = [(op.t_ms, op.data["unsent"]) for op in ops if op.f == "backlog"]
    during = [n for t, n in backlog if down.t_ms <= t <= up.t_ms]
    # A kept committing while nothing could be published: the backlog grew...
    assert max(during) >= 20, backlog
    assert during == sorted(during), backlog
    # ...and drained after the broker came back
    assert backlog[-1][1] == 0 and backlog[-1][0] > up.t_ms, backlog
    failed = [op for op in ops if op.actor == "relay" and op.data.get("tick") == "error"]
    assert failed and all(down.t_ms < op.t_ms < up.t_ms + 1000 for op in failed), failed
    assert any(f.startswith("outbox backlog peaked at ") for f in run.verdict.findings)
