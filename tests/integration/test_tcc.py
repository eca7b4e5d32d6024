"""txn-tcc end to end: a coordinator process, two participant processes, two real
PostgreSQL servers and Redis.

Every expected exit status from the CLI, with what the verdict says, fence on and off;
nothing left behind (no transaction hash, service registration or schema of the run);
and, as a viewer sees it, the transaction whose Try hangs: cancelled on both branches,
the one whose Try never arrived recorded as an empty rollback, its late Try refused."""

from __future__ import annotations

import asyncio

import pytest

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.transactions import Transaction
from collectors.layouts import coordscope
from collectors.state import State
from tests.conftest import observing, run_scenario, until
from tests.tools.cli_runs import judged, leftovers


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ([], [], 0, "held: 8 transfer(s) confirmed and 0 cancelled on every branch"),
        ([], ["confirm-fails"], 0, "sent 3 times (2 failed)"),
        ([], ["empty-rollback"], 0, "1 empty rollback(s) recorded SUSPENDED"),
        ([], ["hanging"], 0, "Try refused: the fence holds SUSPENDED for it"),
        ([], ["duplicate-confirm"], 0, "Confirm again: the fence holds CONFIRMED, nothing done"),
        (["fence=off"], ["hanging"], 1, "ran after its Cancel (a hanging Try): it froze 10 on postgres-"),
        (["fence=off"], ["duplicate-confirm"], 1, "Confirm applied twice on postgres-"),
        (["fence=off"], ["empty-rollback"], 1, "ran with no Try before it (an empty rollback)"),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: list[str], faults: list[str], status: int, says: str
) -> None:
    run_id = judged(cluster, "txn-tcc", params, faults, status, says)
    assert leftovers(cluster, run_id, coordscope.txn_key(f"{run_id}:*")) == []


def transactions(st: State) -> list[Transaction]:
    return st.entities("transaction")  # type: ignore[return-value]


async def test_a_hanging_try_is_seen_cancelled_with_its_empty_rollback_then_refused(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        params = {"transfers": "3", "fault_at": "1", "clients": "1"}
        running = asyncio.ensure_future(
            run_scenario(cluster, local_cluster, "txn-tcc", ["hanging"], **params)
        )

        seen: list[Transaction] = []

        def cancelled(st: State) -> bool:
            seen[:] = [
                t
                for t in transactions(st)
                if t.id.endswith(":t1") and t.state == "CANCELLED" and t.protocol == "TCC (fence on)"
            ]
            return bool(seen)

        await until(bus, cancelled, "t1 CANCELLED in the transactions panel", 15)
        (t,) = seen
        assert t.since_ms is not None and t.note.startswith("10 from postgres-")
        assert [b.state for b in t.branches] == ["CANCELLED", "CANCELLED"]
        # the debit: its Try never came in time, its Cancel found no Try
        assert t.branches[0].detail == "Try: no answer within 800 ms; empty rollback: SUSPENDED"
        run = await running
    assert run.verdict is not None and run.verdict.holds, run.verdict
    ops = run.stored
    debit = t.branches[0].id
    lane = [(op.f, op.kind, op.data.get("tick")) for op in ops if op.actor == debit and op.key == "t1"]
    # the Cancel came first and recorded SUSPENDED; the Try, when it came, was refused
    assert lane.index(("cancel", "ok", "suspended")) < lane.index(("try", "fail", "fenced")), lane
    reads = [op for op in ops if op.f == "balances"]
    assert sum(int(op.value) for op in reads) == 6000 and all(op.data["frozen"] == 0 for op in reads)
    assert [s for op in reads for _, _, s in op.data["fence"] if s == "SUSPENDED"] == ["SUSPENDED"]
