"""idempotency end to end: three real payment-service processes, a PostgreSQL ledger,
Redis marks; every expected exit status from the CLI; what both screens see while a run
goes; a kill -9 of the run leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.marks import Mark
from collectors.families.runs import Run
from collectors.families.services import Service
from collectors.runs import RUN_SOURCE
from scenarios.kit.database import schema_for
from tests.conftest import cli, observing, run_scenario, running, until, wait_until

FAST = {"orders": "3", "timeout_ms": "600", "lease_ms": "1200", "mark_ttl_ms": "2500", "backoff_ms": "150"}


def sets(**params: str) -> list[str]:
    return [x for k, v in {**FAST, **params}.items() for x in ("--set", f"{k}={v}")]


@pytest.mark.parametrize(
    ("params", "fault", "status"),
    [
        ({"guard": "none"}, "lost-reply", 1),
        ({"guard": "local-set"}, "lost-reply", 1),
        ({"guard": "db-unique"}, "lost-reply", 0),
        ({"guard": "redis-mark"}, "lost-reply", 0),
        ({}, "concurrent-duplicate", 0),
        ({}, "crash-mid-request", 0),
        ({"crash_at": "after-charge"}, "crash-mid-request", 1),
        ({"crash_at": "after-charge", "guard": "db-unique"}, "crash-mid-request", 0),
        ({}, "lease-too-short", 1),
        ({}, "mark-expired", 1),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: dict[str, str], fault: str, status: int
) -> None:
    out = cli(cluster, "run", "idempotency", *sets(**params), "--fault", fault, "--quiet")
    assert out.returncode == status, out.stdout + out.stderr
    if status == 1:
        # the verdict names the order, both charges, the instances and the moment
        summary = out.stdout.splitlines()[1]
        assert "order-" in summary and summary.count("#") >= 2 and "pay-" in summary and "t=" in summary
    else:
        assert out.stdout.startswith("HELD"), out.stdout
    assert leftovers(cluster) == ([], []), "a run must clean up its marks, registrations and schema"


def leftovers(info: ClusterInfo, run_id: str = "") -> tuple[list[bytes], list[str]]:
    """A run's marks, service registrations and schema still there (every run's by default)."""
    keys: list[bytes] = []
    for m in info.masters:
        r = redis.Redis(port=m.port)
        found = r.scan_iter(f"coordscope:*{run_id}*")
        keys += [k for k in found if k.split(b":")[1] in (b"mark", b"service", b"cleanup")]
        r.close()
    pg = info.pg_targets()[0]  # postgres-1, the business database
    pattern = schema_for(run_id) if run_id else "coordscope\\_%"
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (pattern,))
        schemas = [str(row[0]) for row in rows]
    return keys, schemas


async def test_services_marks_and_charges_show_while_a_run_goes(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        # the crash comes after we looked; a lease a starved machine cannot outlast (a request
        # that takes longer than its lease is charged twice, rightly judged violated)
        params = {**FAST, "orders": "6", "fault_at": "5", "lease_ms": "3000", "mark_ttl_ms": "6000"}
        task = asyncio.create_task(
            run_scenario(cluster, local_cluster, "idempotency", ["crash-mid-request"], **params)
        )
        await until(
            bus,
            lambda st: (
                len([s for s in st.entities("service") if isinstance(s, Service) and s.status == "up"]) == 3
            ),
            "three payment services up",
            timeout=20,
        )
        services = [s for s in bus.state.entities("service") if isinstance(s, Service)]
        assert {s.role for s in services} == {"payment-service"}
        pids = [s.pid for s in services if s.pid]
        assert len(pids) == 3 and all(running(p) for p in pids)  # real processes, up
        await until(
            bus,
            lambda st: any(
                isinstance(m, Mark) and m.state == "COMPLETED" and (m.owner or "").startswith("pay-")
                and (m.response or "").startswith("200") and m.fingerprint
                for m in st.entities("mark")
            ),
            "a completed mark with its owner, response and fingerprint",
            timeout=20,
        )  # fmt: skip
        await until(
            bus,
            lambda st: any(isinstance(s, Service) and s.status == "killed" for s in st.entities("service")),
            "the crashed instance shown killed",
            timeout=20,
        )
        done = await task
        assert done.status == "held", done.error or (done.verdict and done.verdict.summary)
        # the restarted instance narrates as a source of its own (its ops count from 0 again,
        # and none is taken for a copy of its first life's); the crash names the life it ended
        crash = next(op for op in done.stored if op.f == "crash")
        crashed = crash.actor
        assert crash.src == RUN_SOURCE and crash.data["source"] == crashed
        after = [
            op
            for op in done.stored
            if op.src != RUN_SOURCE and op.actor == crashed and op.index > crash.index
        ]
        assert all(op.src == f"{crashed}#1" for op in after), after
        assert sorted(op.n for op in after) == list(range(len(after)))  # concurrent requests interleave
        run_id = done.id
        await until(
            bus,
            lambda st: (
                isinstance(r := st.get("run", run_id), Run) and r.status == "held" and len(r.table) == 7
            ),
            "the run's charges per order",
            timeout=10,
        )
        run = bus.state.get("run", run_id)
        assert isinstance(run, Run)
        assert run.table[0] == ("order", "charges", "charged by", "client's answer")
        assert [row[1] for row in run.table[1:]] == ["1"] * 6
        lanes = {lane.actor: lane for lane in run.lanes}
        assert {"client-1", "client-2", "pay-1", "pay-2", "pay-3"} <= set(lanes)
        ticks = {t.kind for lane in lanes.values() for t in lane.ticks}
        assert {"charge", "crash", "conflict"} <= ticks, ticks
        assert any(s.kind == "handle" for lane in lanes.values() for s in lane.spans)
        await until(bus, lambda st: not st.entities("service"), "the services gone", timeout=10)
    assert not any(running(p) for p in pids)
    assert leftovers(cluster) == ([], [])


@pytest.mark.parametrize("when", ["as its services start", "while it pays"])
def test_kill_9_of_the_run_leaves_no_process_or_key_behind(cluster: ClusterInfo, when: str) -> None:
    env = {**os.environ, "COORDSCOPE_STATE": cluster.state_dir}
    r = redis.Redis(port=cluster.masters[-1].port)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            "idempotency",
            *sets(orders="200", work_ms="300"),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parent,
    )
    try:
        wait_until(lambda: list(r.scan_iter("coordscope:service:*")), 30, "a service registered")
        if when == "while it pays":
            wait_until(
                lambda: len(list(r.scan_iter("coordscope:service:*"))) == 3, 30, "three services registered"
            )
            marks = lambda: [k for k in leftovers(cluster)[0] if k.startswith(b"coordscope:mark:")]  # noqa: E731
            wait_until(marks, 20, "a mark written")
        pids = [int(r.hget(k, "pid") or 0) for k in r.scan_iter("coordscope:service:*")]
        (run_key,) = list(r.scan_iter("coordscope:run:idempotency-*"))
        assert pids and all(running(p) for p in pids)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    # the janitor and the services themselves notice the heartbeat stopped
    wait_until(lambda: not any(running(p) for p in pids), 20, "every service process gone")
    run_id = run_key.decode().removeprefix("coordscope:run:")
    wait_until(lambda: leftovers(cluster, run_id) == ([], []), 20, "the run's keys and schema gone")
    wait_until(lambda: r.hget(run_key, "status") == b"abandoned", 20, "the run marked abandoned")
    assert b"janitor" in (r.hget(run_key, "error") or b"")
    r.close()


def test_the_ledger_decides_not_the_client(cluster: ClusterInfo) -> None:
    """The verdict comes from PostgreSQL's rows as read back into the stored history."""
    out = cli(cluster, "run", "idempotency", *sets(guard="none"), "--fault", "lost-reply", "--json")
    assert out.returncode == 1, out.stderr
    body = json.loads(out.stdout)
    verdict = body["verdict"]
    assert not verdict["holds"] and len(verdict["ops"]) == 2
    # the run's ledger, and no mark: guard=none never wrote one
    assert verdict["keys"] == [f"{schema_for(body['id'])}.ledger"]
