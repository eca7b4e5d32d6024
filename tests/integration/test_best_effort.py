"""txn-best-effort end to end: service A, the notifier and service B as processes, two
real PostgreSQL servers and Redis.

Every expected exit status from the CLI, with what the verdict says; nothing left
behind (no notification, queue or schedule key, service registration or schema of the
run); and, as a viewer sees it, a notification on its ladder while B is down — NOTIFYING
with its attempts counting, GAVE_UP, then RECONCILED by B's query — and its journey
across the lanes from A's commit to B's reconciliation."""

from __future__ import annotations

import asyncio

import pytest

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.messages import Message
from collectors.journeys import journeys
from collectors.layouts import messaging
from collectors.state import State
from tests.conftest import observing, run_scenario, until
from tests.tools.cli_runs import judged, leftovers

LONGER = "fault_ms=6000"
"""B down longer than the default ladder (0, 300, 300, 600, 3600 ms: 4.8 s)."""


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ([], [], 0, "held: 6 payment(s) in A, each applied exactly once in B (6 by notification, 0 by"),
        ([], ["receiver-down"], 0, "p3: ACKED after 5/5 attempt(s) (refused ×4 → success)"),
        ([], ["receiver-slow"], 0, "p3: ACKED after 3/5 attempt(s) (no answer within 500 ms ×2 → success)"),
        ([], ["lost-ack"], 0, "p3: ACKED after 5/5 attempt(s) (503: answer lost (injected) ×4 → success)"),
        (
            [LONGER],
            ["receiver-down"],
            0,
            "p3: RECONCILED after 5/5 attempt(s) (refused ×5), then reconciled: applied by B's query",
        ),
        (
            [LONGER, "reconcile=off"],
            ["receiver-down"],
            1,
            "p3 (103) is paid in A and was never applied in B: its notification GAVE_UP after 5/5 "
            "attempt(s) (last: attempt 5: refused), and reconciliation is off",
        ),
        (
            ["dedup=off"],
            ["lost-ack"],
            1,
            "p3 applied 5 times in B (+103 each time, by notification attempts 1,",
        ),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: list[str], faults: list[str], status: int, says: str
) -> None:
    run_id = judged(cluster, "txn-best-effort", params, faults, status, says)
    assert leftovers(cluster, run_id, messaging.notify_prefix(run_id) + "*") == []


def notifications(st: State) -> list[Message]:
    found = [m for m in st.entities("message") if isinstance(m, Message)]
    return [m for m in found if m.kind == messaging.NOTIFICATION_KIND]


async def test_a_notification_is_seen_on_its_ladder_given_up_then_reconciled(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    # B is down from the first payment for 2 s, longer than a ladder of 0, 300, 300 ms
    params = {"payments": "2", "fault_at": "1", "rungs": "2", "fault_ms": "2000", "reconcile_every_ms": "300"}
    async with observing(cluster) as bus:
        running = asyncio.ensure_future(
            run_scenario(cluster, local_cluster, "txn-best-effort", ["receiver-down"], **params)
        )
        seen: list[tuple[str, int, bool]] = []

        def p1(st: State) -> bool:
            for m in notifications(st):
                step = (m.state, m.tries, m.next_ms is not None)
                if m.msg_id == "p1" and m.max_tries == 3 and (not seen or seen[-1] != step):
                    seen.append(step)
            return bool(seen) and seen[-1][0] == messaging.RECONCILED

        await until(bus, p1, "p1 RECONCILED in the messages panel", 20)
        run = await running
    assert run.verdict is not None and run.verdict.holds, run.verdict
    # on its ladder (an attempt made, the next one due), given up, then reconciled by B
    assert any(s == messaging.NOTIFYING and n >= 1 and due for s, n, due in seen), seen
    states = [s for s, _, _ in seen]
    assert states.index(messaging.GAVE_UP) < states.index(messaging.RECONCILED), seen
    assert seen[-1] == (messaging.RECONCILED, 3, False)
    (journey,) = [j for j in journeys(run.stored)[0] if j.msg == "p1"]
    assert journey.path == (
        "A committed → A published → notifier notify ×2 → notifier gave-up → B reconciled"
    ), journey.path
    assert not journey.bad
