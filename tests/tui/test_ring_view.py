"""The run view of an ordering run shows its ring: the workers' arcs, queue depth and
pending entries, and each order's applied sequence with the breach marked — from what a
real Redis holds, written as the router and the workers write it."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable

from app.cluster import ClusterInfo
from app.tui.screens.run_view import RunScreen
from tests.conftest import redis_client
from tests.tools import ordering_store
from tests.tui.test_tui import Harness, rendered, tui

__all__ = ["tui"]

RUN = "ordering-000001-test"
ORDERS = [f"order-{i}" for i in range(1, 13)]


def rows(table: DataTable[object]) -> dict[str, list[Text]]:
    """Each row's cells by its first cell's text (the worker or the order)."""
    out = {}
    for i in range(table.row_count):
        cells = [c if isinstance(c, Text) else Text(str(c)) for c in table.get_row_at(i)]
        out[cells[0].plain.removeprefix("✘ ").split()[0]] = cells
    return out


def styled(text: Text, word: str, style: str) -> bool:
    """Whether the first ``word`` in ``text`` is drawn with ``style`` (e.g. "red")."""
    start = text.plain.find(word)
    end = start + len(word)
    styles = [str(s.style) for s in text.spans if s.start <= start and end <= s.end]
    return start >= 0 and any(style in s for s in [*styles, str(text.style)])


async def test_the_run_view_shows_the_rings_workers_and_a_breached_order(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    from scenarios.ordering.router import Router

    app, pilot = tui
    r = redis_client(cluster)
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2", "worker-3"], 160, ORDERS)
    await asyncio.to_thread(ordering_store.write_run, r, RUN)
    await asyncio.to_thread(ordering_store.queue, r, RUN, "worker-1", 3, 1)
    await asyncio.to_thread(ordering_store.applied, r, RUN, "order-2", [1, 2, 4, 3], "worker-2", "shipped")
    await asyncio.to_thread(ordering_store.applied, r, RUN, "order-5", [1, 2], "worker-3", "paid")
    await asyncio.to_thread(ordering_store.publish, r, router)

    await pilot.press("v")
    assert isinstance(app.screen, RunScreen)
    screen = app.screen
    workers = screen.query_one("#ring-workers", DataTable)
    orders = screen.query_one("#ring-orders", DataTable)
    await rendered(pilot, lambda: workers.row_count == 3 and orders.row_count == len(ORDERS), "the ring")
    assert router.ring is not None
    share = router.ring.share()
    shown = rows(workers)
    for name in ("worker-1", "worker-2", "worker-3"):
        assert shown[name][1].plain == f"{share[name] * 100:.1f}%", name
    # worker-1's queue: 3 entries, 1 delivered and not acknowledged, to its first incarnation
    await rendered(pilot, lambda: rows(workers)["worker-1"][3].plain == "3", "worker-1's depth")
    w1 = rows(workers)["worker-1"]
    assert (w1[4].plain, w1[5].plain) == ("1", "worker-1.0 1")
    assert styled(w1[4], "1", "yellow")  # pending entries stand out
    assert rows(workers)["worker-2"][3].plain == "?"  # no queue written: not read, not "0"

    breached = rows(orders)["order-2"]
    assert breached[0].plain == "✘ order-2" and styled(breached[0], "order-2", "red")
    applied = breached[2]
    assert applied.plain.startswith("1 2 4 3 out-of-order")
    assert styled(applied, "4", "red") and not styled(applied, "3", "red")  # 4 broke it, not 3
    assert f"→ {router.owner('order-2')}" in applied.plain
    fine = rows(orders)["order-5"]
    assert fine[0].plain == "order-5" and styled(fine[2], "2", "green") and not styled(fine[2], "2", "red")
    title = str(screen.query_one("#ring-title").render())
    assert "1 breached: order-2" in title and "160 virtual nodes" in title

    # a worker joins: the view follows the new ring, with the orders it moved
    change = router.reshape([*router.workers, "worker-4"], "+worker-4", 1000)
    await asyncio.to_thread(ordering_store.publish, r, router)
    await rendered(pilot, lambda: workers.row_count == 4, "the fourth worker")
    assert router.ring is not None
    assert rows(workers)["worker-4"][1].plain == f"{router.ring.share()['worker-4'] * 100:.1f}%"
    assert change.moves, "adding a worker moves some of the orders"
    for move in change.moves:
        label = f"moved {move.before} -> {move.after}"
        await rendered(pilot, lambda m=move, t=label: t in rows(orders)[m.key][2].plain, f"{move.key} moved")
    app.save_screenshot("coordscope-ring.svg", "/tmp")
