"""ordering end to end: real worker processes on Redis Streams, Dubbo's ring, a
ZooKeeper sequence gate; every expected exit status from the CLI; the ring, the
queues and the orders as both screens see them while a run goes."""

from __future__ import annotations

import asyncio

import pytest
import redis
from kazoo.client import KazooClient

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.queues import Queue
from collectors.families.rings import Ring
from collectors.families.runs import Run
from collectors.families.services import Service
from collectors.layouts import coordscope
from scenarios.ordering.worker import APPLY, EVENTS
from tests.conftest import cli, observing, redis_client, run_scenario, until


def sets(**params: str) -> list[str]:
    return [x for k, v in params.items() for x in ("--set", f"{k}={v}")]


@pytest.mark.parametrize(
    ("params", "faults", "status"),
    [
        ({"route": "round-robin"}, [], 1),
        ({"route": "consistent-hash"}, [], 0),
        ({"route": "zk-seq"}, [], 0),
        ({"route": "consistent-hash", "dedup": "off"}, ["crash-before-ack"], 1),
        ({"route": "consistent-hash", "dedup": "on"}, ["crash-before-ack"], 0),
        ({"route": "consistent-hash"}, ["retry-reorder"], 1),
        ({"route": "zk-seq"}, ["retry-reorder"], 0),
        ({"route": "consistent-hash"}, ["kill-worker"], 0),
        ({"route": "consistent-hash", "handoff": "drain"}, ["add-worker"], 0),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: dict[str, str], faults: list[str], status: int
) -> None:
    flags = [x for f in faults for x in ("--fault", f)]
    out = cli(cluster, "run", "ordering", *sets(**params), *flags, "--quiet")
    assert out.returncode == status, out.stdout + out.stderr
    summary = out.stdout.splitlines()[1]
    if status == 0:
        assert out.stdout.startswith("HELD") and "each applied once, in order" in summary, out.stdout
    elif faults == ["crash-before-ack"]:
        # the same event, by the worker's first life and by the one that claimed its entry
        assert "applied twice (by worker-" in summary and ".0, then by worker-" in summary, summary
    else:
        assert "applied by worker-" in summary and "before event" in summary, summary
    assert leftovers(cluster) == []


def leftovers(info: ClusterInfo) -> list[str]:
    """Keys and znodes any ordering run left behind."""
    found: list[str] = []
    for m in info.masters:
        r = redis.Redis(port=m.port)
        for pattern in (
            "coordscope:ordering:*",
            "coordscope:mark:{ordering-*",
            "coordscope:service:ordering-*",
        ):
            found += [k.decode() for k in r.scan_iter(pattern)]
        r.close()
    zk = KazooClient(hosts=info.zk_targets()[0].hosts)
    zk.start(10)
    try:
        if zk.exists("/coordscope/locks/ordering"):
            found += [
                f"/coordscope/locks/ordering/{c}" for c in zk.get_children("/coordscope/locks/ordering")
            ]
    finally:
        zk.stop()
        zk.close()
    return found


async def test_the_ring_queues_and_orders_show_while_a_run_goes(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        params = {"orders": "24", "fault_at": "40", "gap_ms": "40"}
        task = asyncio.create_task(run_scenario(cluster, local_cluster, "ordering", ["add-worker"], **params))

        def ring(st: object) -> Ring | None:
            rings = [r for r in bus.state.entities("ring") if isinstance(r, Ring)]
            return rings[0] if rings else None

        await until(
            bus, lambda st: (r := ring(st)) is not None and len(r.workers) == 3, "the ring", timeout=20
        )
        first = ring(bus.state)
        assert first is not None and first.route == "consistent-hash" and first.vnodes == 160
        assert len(first.points) == 480 and len(first.orders) == 24
        assert sum(w.share or 0 for w in first.workers) == pytest.approx(1.0)
        # the workers are real processes, registered
        await until(
            bus,
            lambda st: (
                len([s for s in st.entities("service") if isinstance(s, Service) and s.status == "up"]) >= 3
            ),
            "three workers up",
            timeout=20,
        )
        # their queues: streams with the group, followed by the ring (depth, pending)
        await until(
            bus,
            lambda st: (r := ring(st)) is not None and any(w.depth for w in r.workers),
            "a worker with events queued",
            timeout=20,
        )
        queues = [q for q in bus.state.entities("queue") if isinstance(q, Queue) and ":q:worker-" in q.name]
        assert queues and all(q.groups and q.groups[0].name == coordscope.WORKER_GROUP for q in queues)
        # the ring changes when a worker joins: a fourth worker's points, and what moved
        await until(
            bus,
            lambda st: (r := ring(st)) is not None and len(r.workers) == 4,
            "the fourth worker",
            timeout=30,
        )
        changed = ring(bus.state)
        assert changed is not None and changed.version == 1 and len(changed.points) == 640
        assert "+worker-4" in changed.change and "theory 25.0%" in changed.change
        assert changed.moved == sum(1 for o in changed.orders if o.moved) > 0
        assert all(o.moved.endswith("-> worker-4") for o in changed.orders if o.moved)
        # every order's sequence, as applied
        await until(
            bus,
            lambda st: (r := ring(st)) is not None and all(len(o.applied) >= 4 for o in r.orders),
            "every order applied",
            timeout=40,
        )
        final = ring(bus.state)
        done = await task
        assert done.verdict is not None and final is not None
        # whether the hand-off reordered depends on what was in flight: the screens say the same
        assert (final.breached == 0) == done.verdict.holds, (final.breached, done.verdict.summary)
        assert any("ring change" in f for f in done.verdict.findings)
        await until(bus, lambda st: ring(st) is None, "the ring cleaned up", timeout=15)
        # what stays with the run: each order's sequence as its table, the lanes in actor order
        run_id = done.id
        await until(
            bus,
            lambda st: isinstance(r := st.get("run", run_id), Run) and len(r.table) == 25,
            "the orders' sequences as the run's table",
            timeout=10,
        )
        run = bus.state.get("run", run_id)
        assert isinstance(run, Run)
        assert run.table[0] == ("order", "applied (seq by consumer)", "owner", "breach")
        breached_rows = [row[0] for row in run.table[1:] if row[3].startswith("✘")]
        assert len(breached_rows) == final.breached
        assert [lane.actor for lane in run.lanes][:5] == [
            "producer-1", "producer-2", "worker-1", "worker-2", "worker-3"
        ]  # fmt: skip
    assert leftovers(cluster) == []


async def test_a_crash_before_ack_is_claimed_by_the_next_incarnation(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    done = await run_scenario(cluster, local_cluster, "ordering", ["crash-before-ack"], fault_at="6")
    assert done.status == "held", done.verdict and done.verdict.summary
    claims = [op for op in done.stored if op.f == "claim" and op.data.get("tick") == "claim"]
    skipped = [op for op in done.stored if op.data.get("tick") == "duplicate"]
    crash = next(op for op in done.stored if op.f == "crash-point")
    assert claims and claims[0].actor == crash.actor  # its next life claimed the entry (XAUTOCLAIM)
    assert skipped and skipped[0].key == crash.key  # and its mark said: applied before, skip it


def test_the_apply_script_applies_a_batch_in_turn_and_skips_what_its_marks_know(cluster: ClusterInfo) -> None:
    """What a worker sends for a batch read at once (narration off): one script call."""
    r = redis_client(cluster)
    run = "ordering-test-apply"
    keys = [coordscope.order_key(run, o) for o in ("o1", "o2")]
    marks = [coordscope.event_mark_key(run, o, s) for o in ("o1", "o2") for s in (1, 2)]
    try:
        events = [("o1", 1, "1-0"), ("o2", 1, "1-1"), ("o1", 2, "1-2"), ("o1", 2, "1-3")]  # the last: again
        args: list[str | int] = ["w-1.0", 77, 60_000]
        batch_keys: list[str] = []
        for order, seq, entry in events:
            batch_keys += [coordscope.order_key(run, order), coordscope.event_mark_key(run, order, seq)]
            args += [seq, entry, EVENTS[seq - 1]]
        out = r.eval(APPLY, len(batch_keys), *batch_keys, *args)
        assert [x.decode() for x in out] == [
            "applied",
            "",
            "applied",
            "",
            "applied",
            "",
            "duplicate",
            "w-1.0",
        ]
        assert r.hget(keys[0], "log") == b"1 w-1.0 77 1-0;2 w-1.0 77 1-2"
        assert r.hget(keys[0], "state") == b"paid" and r.hget(keys[1], "seq") == b"1"
        assert r.hget(marks[1], "state") == b"COMPLETED" and 0 < r.pttl(marks[1]) <= 60_000
        # without marks (dedup=off) the same redelivery is applied again
        again = r.eval(APPLY, 1, keys[0], "w-1.1", 88, 60_000, 2, "1-3", "paid")
        assert [x.decode() for x in again] == ["applied", ""]
        assert r.hget(keys[0], "log").endswith(b";2 w-1.1 88 1-3")  # type: ignore[union-attr]
    finally:
        r.delete(*keys, *marks)
        r.close()
