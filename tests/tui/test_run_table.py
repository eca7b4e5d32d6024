"""The run view's own table (charges per order, RedLock attempts) as a run's rows change."""

from __future__ import annotations

import dataclasses
import time

from textual.widgets import DataTable

from app.tui.model import Model
from app.tui.screens.run_view import RunScreen
from app.tui.widgets.lanes import Lanes
from collectors.families.runs import Run
from tests.tui.test_snapshots import Still


async def test_a_cell_that_grows_widens_its_column() -> None:
    model = Model()
    run = Run(
        id="r1",
        scenario="idempotency",
        status="running",
        started_ms=int(time.time() * 1000),
        table=(("order", "charged by"),),
    )
    model.entities["run"]["r1"] = dataclasses.replace(run, table=(*run.table, ("order-2", "#4 pay-2")))
    screen = RunScreen(model, {}, "r1")
    app = Still(screen)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        table = screen.query_one("#run-table", DataTable)
        assert table.get_row_at(0) and str(table.get_row_at(0)[1]) == "#4 pay-2"
        later = "#4 pay-2, #7 pay-2"  # the second charge of the order lands on the same row
        model.entities["run"]["r1"] = dataclasses.replace(run, table=(*run.table, ("order-2", later)))
        screen.refresh_run()
        await pilot.pause()
        assert str(table.get_row_at(0)[1]) == later
        assert table.ordered_columns[1].content_width >= len(later)


def test_the_time_axis_keeps_to_a_few_labels_however_long_the_run() -> None:
    """A run hash with a start time far off (another clock, garbage) once meant millions of
    labels per frame: the screen froze."""
    for end in (900, 61_000, 3_600_000, 10**12):
        axis = Lanes._axis(100, end).plain
        labels = axis.split()
        assert 2 <= len(labels) <= 100 // 8 + 1, (end, labels)
        assert labels[0] in ("0s", "0m") and all(label[-1] in "sm" for label in labels)
    assert Lanes._axis(100, 3_600_000).plain.split()[:3] == ["0m", "5m", "10m"]
