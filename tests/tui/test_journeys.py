"""The run view's messages in the TUI: each message's path, one followed with enter — its
steps listed, its marks lit on the lanes — and let go with enter again."""

from __future__ import annotations

import time

from textual.widgets import DataTable, Static

from app.tui.model import Model
from app.tui.screens.run_view import RunScreen
from app.tui.widgets.journeys import Journeys
from app.tui.widgets.lanes import Lanes
from collectors.families.runs import Run
from collectors.journeys import journeys
from collectors.runs import Op, lanes
from tests.tui.test_snapshots import Still


def op(i: int, actor: str, msg: str, tick: str, note: str = "") -> Op:
    return Op(
        index=i, t_ms=10 * i, actor=actor, kind="info", f="step", note=note, data={"msg": msg, "tick": tick}
    )


HISTORY = [
    op(0, "A", "o1", "committed"),
    op(1, "A", "o2", "committed"),
    op(2, "relay", "o1", "published", "as 1-0"),
    op(3, "relay", "o2", "published", "as 2-0"),
    op(4, "B-1", "o1", "applied"),
    op(5, "relay", "o2", "published", "as 3-0: again, the relay died before marking it"),
    op(6, "B-1", "o2", "applied"),
    op(7, "B-2", "o2", "twice", "\x1b[31m[bold]applied AGAIN[/bold]"),  # untrusted text
]


async def test_a_message_is_followed_with_enter_and_let_go() -> None:
    followed, total = journeys(HISTORY)
    run = Run(
        id="r1", scenario="txn-outbox", status="violated", started_ms=int(time.time() * 1000),
        lanes=lanes(HISTORY), journeys=followed, messages=total,
    )  # fmt: skip
    model = Model()
    model.entities["run"]["r1"] = run
    screen = RunScreen(model, {}, "r1")
    app = Still(screen)
    async with app.run_test(size=(150, 60)) as pilot:
        await pilot.pause()
        box = screen.query_one(Journeys)
        assert box.display
        table = box.query_one(DataTable)
        assert table.row_count == 2
        assert str(table.get_row_at(1)[2]) == "A committed → relay published ×2 → B-1 applied → B-2 twice"
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        await pilot.pause()
        steps = box.query_one("#journey-steps", Static)
        shown = str(steps.render())
        assert steps.display and "message o2" in shown and "again, the relay died" in shown
        assert "\\x1b[31m[bold]applied AGAIN[/bold]" in shown  # shown as text, never obeyed
        assert screen.query_one(Lanes).followed == "o2"
        await pilot.press("enter")
        await pilot.pause()
        assert not steps.display and screen.query_one(Lanes).followed == ""
