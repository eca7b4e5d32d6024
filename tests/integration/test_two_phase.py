"""txn-2pc end to end: coordinator processes, ZooKeeper, two real PostgreSQL servers.

Every expected exit status from the CLI, with what the verdict says; nothing left
behind (no prepared transaction, schema or znode of the run), even after branches were
left in doubt; and, as a viewer sees it, a transfer blocked behind a branch in doubt —
who waits on whom — released by the coordinator's recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import psycopg
import pytest
import redis
from kazoo.client import KazooClient

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.transactions import Transaction
from collectors.layouts import coordscope
from collectors.state import State
from tests.conftest import cli, observing, run_scenario, running, until, wait_until


def leftovers(info: ClusterInfo, run_id: str) -> list[str]:
    found: list[str] = []
    for target in info.pg_targets():
        with psycopg.connect(target.dsn, autocommit=True) as conn:
            prefix = coordscope.branch_gid_prefix(run_id)
            found += [
                f"{target.id}: prepared {g}"
                for (g,) in conn.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, %s)", (prefix,)
                )
            ]
            found += [
                f"{target.id}: schema {s}"
                for (s,) in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                    ("coordscope_" + run_id.replace("-", "_") + "%",),
                )
            ]
    (zk,) = info.zk_targets()
    client = KazooClient(hosts=zk.hosts)
    client.start(10)
    try:
        if client.exists(coordscope.two_pc_log(run_id)):
            found.append(f"znode {coordscope.two_pc_log(run_id)}")
    finally:
        client.stop()
        client.close()
    return found


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ([], [], 0, "held: 8 transfer(s) committed on both participants"),
        ([], ["vote-no"], 0, "voted no: insufficient funds"),
        ([], ["coordinator-crash-after-prepare"], 0, "was COMMITTING: commit (the log's decision)"),
        ([], ["coordinator-crash-before-log"], 0, "was PREPARING: presumed abort"),
        (["recovery=off"], ["coordinator-crash-after-prepare"], 1, "left in doubt, holding their locks"),
        ([], ["participant-crash-after-prepare"], 0, "the branch is still PREPARED"),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: list[str], faults: list[str], status: int, says: str
) -> None:
    flags = [x for p in params for x in ("--set", p)] + [x for f in faults for x in ("--fault", f)]
    out = cli(cluster, "run", "txn-2pc", *flags)
    assert out.returncode == status, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    judged = next(i for i, line in enumerate(lines) if line.startswith(("HELD", "VIOLATED")))
    assert says in "\n".join(lines[judged:]), out.stdout
    run_id = lines[0].split()[1].rstrip(":")
    assert run_id.startswith("txn-2pc-"), out.stdout
    assert leftovers(cluster, run_id) == []
    if "recovery=off" in params:
        # named: each branch, its participant, its age and the locks it holds
        verdict = lines[judged + 1]
        assert verdict.count(":coord-") == 2 and "s old, " in verdict and "lock(s)" in verdict, verdict
        assert "blocked behind a branch in doubt" in out.stdout
        assert "a row lock not granted within" in out.stdout  # the blocked transfer gave up


def transactions(st: State) -> list[Transaction]:
    return st.entities("transaction")  # type: ignore[return-value]


async def test_a_transfer_blocked_behind_a_branch_in_doubt_is_seen_waiting_then_released(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        params = {"fault_ms": "7000", "lock_timeout_ms": "20000", "transfers": "4", "fault_at": "1"}
        running = asyncio.ensure_future(
            run_scenario(cluster, local_cluster, "txn-2pc", ["coordinator-crash-after-prepare"], **params)
        )

        def blocked(st: State) -> Transaction | None:
            for t in transactions(st):
                waiting = [b for b in t.branches if "waiting on it:" in b.detail and "(coord-2)" in b.detail]
                if t.state == "IN DOUBT (COMMITTING)" and waiting and t.id.endswith("coord-1/t1"):
                    return t
            return None

        await until(bus, blocked, "the crashed transaction in doubt, coord-2's transfer waiting on it", 15)
        t = blocked(bus.state)
        assert t is not None and t.since_ms is not None
        assert all(b.state == "PREPARED" for b in t.branches) and len(t.branches) == 2
        assert "lock(s) on accounts" in " ".join(b.detail for b in t.branches)

        def released(st: State) -> bool:
            return any(x.id == t.id and x.state == "DONE" for x in transactions(st))

        await until(bus, released, "recovery committing it (the log says DONE)", 20)
        run = await running
    assert run.verdict is not None and run.verdict.holds, run.verdict
    ops = run.stored
    probe = [op for op in ops if op.actor == "probe" and op.f == "transfer" and op.kind != "invoke"]
    assert [op.value for op in probe] == ["committed"]  # released by the recovery, not timed out
    assert any(op.f == "blocked" and "(pid " in op.note for op in ops)
    balances = [op for op in ops if op.f == "balances"]
    assert sum(int(op.value) for op in balances) == 6000 and len(balances) == 2


def test_kill_9_of_the_run_rolls_back_its_branches_in_doubt_and_leaves_nothing(cluster: ClusterInfo) -> None:
    env = {**os.environ, "COORDSCOPE_STATE": cluster.state_dir}
    flags = ["--fault", "coordinator-crash-after-prepare", "--set", "recovery=off", "--set", "fault_at=1"]
    flags += ["--set", "transfers=2", "--set", "lock_timeout_ms=60000"]
    run = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "txn-2pc", *flags],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    control = redis.Redis(port=cluster.masters[-1].port)
    try:
        assert run.stdout is not None
        run_id = run.stdout.readline().split()[1].rstrip(":")
        wait_until(
            lambda: sum("prepared" in x for x in leftovers(cluster, run_id)) == 2,
            30,
            "both branches in doubt",
        )
        keys = list(control.scan_iter(f"coordscope:service:{run_id}:*"))
        pids = [int(control.hget(k, "pid") or 0) for k in keys]
        assert len(pids) == 2 and any(running(p) for p in pids)  # coord-1 crashed, coord-2 runs
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    # the janitor: the coordinators stopped, the branches rolled back, the schemas and the log gone
    wait_until(lambda: not any(running(p) for p in pids), 20, "the coordinators gone")
    try:
        wait_until(lambda: leftovers(cluster, run_id) == [], 30, "nothing of the run left")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {leftovers(cluster, run_id)}") from None
    control.close()
