"""``coordscope replay`` in the TUI through Pilot, on a committed recording (no servers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot

from app.config import Settings
from app.core import Core
from app.replay import Replay
from app.tui.cells import now_ms, wall_ms
from app.tui.replay_app import ReplayApp
from app.tui.screens.dashboard import DashboardScreen
from app.tui.screens.run_view import RunScreen
from app.tui.widgets.entity_table import EntityTable
from app.tui.widgets.replay_bar import ReplayBar, clock_time
from collectors.recording import read_recording
from tests.tui.harness import ErrorsFail

FIXTURE = Path(__file__).parent.parent / "fixtures" / "lock-redis.jsonl"


class Harness(ErrorsFail, ReplayApp):
    """The app under test: any error, raised or toasted, fails the test."""


@pytest.fixture
async def replaying(tmp_path: Path) -> AsyncIterator[tuple[Harness, Pilot[None]]]:
    replay = Replay(read_recording(FIXTURE), speed=1, playing=True)
    app = Harness(Core(Settings(state_dir=tmp_path, redis=(), zookeeper=()), replay))
    app.errors = []
    async with app.run_test(size=(160, 48)) as pilot:
        yield app, pilot
    assert app.errors == []
    assert now_ms() - wall_ms() < 5000, "the countdown clock is the wall clock again"


def holders(app: ReplayApp) -> list[str]:
    table = app.screen_stack[0].query_one("#locks", EntityTable)
    return [c.plain if isinstance(c, Text) else str(c) for c in table.get_column("holder")]


async def shown(pilot: Pilot[None], predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"the TUI never showed {what}")
        await pilot.pause(0.05)


async def click_track(pilot: Pilot[None], bar: ReplayBar, fraction: float) -> None:
    start, end = bar._regions["track"]
    x = bar.styles.padding.left + start + round(fraction * (end - start - 1))
    await pilot.click(ReplayBar, offset=(x, 0))


async def test_pause_seek_and_step_show_the_lock_holder_of_that_moment(
    replaying: tuple[Harness, Pilot[None]],
) -> None:
    app, pilot = replaying
    replay = app.replay
    rec = replay.recording
    await shown(pilot, lambda: app.screen.query(ReplayBar), "the replay bar")
    bar = app.screen.query_one(ReplayBar)
    assert isinstance(app.screen, DashboardScreen)
    await pilot.press("space")
    assert not replay.playing
    await shown(pilot, lambda: "‖ paused" in str(bar.render()), "paused on the bar")
    await pilot.press("end")
    assert replay.position_ms() == rec.end_ms
    await shown(pilot, lambda: holders(app) == [], "no lock at the end")
    # the scrubber: a click 2.5 s into the recording, while client-2 held the lock
    await click_track(pilot, bar, 2500 / (rec.end_ms - rec.start_ms))
    assert abs(replay.position_ms() - (rec.start_ms + 2500)) < 100
    await shown(pilot, lambda: holders(app) == ["client-2"], "client-2 holding at 2.5 s")
    line = str(bar.render())
    assert clock_time(replay.position_ms()) in line and "0:02 / 0:05" in line
    assert "replay: read-only" in line
    await pilot.press("right")  # 1 s later: client-3 holds
    await shown(pilot, lambda: holders(app) == ["client-3"], "client-3 holding at 3.5 s")
    await pilot.press("left", "left")
    await shown(pilot, lambda: holders(app) == ["client-1"], "client-1 holding at 1.5 s")
    await pilot.press("home")
    await shown(pilot, lambda: holders(app) == [], "no lock at the start")
    assert replay.position_ms() == rec.start_ms and not replay.playing


async def test_speed_keys_the_bar_and_the_read_only_screens(replaying: tuple[Harness, Pilot[None]]) -> None:
    app, pilot = replaying
    replay = app.replay
    # keys only once the screen is up: a key pressed while it mounts may go nowhere
    await shown(pilot, lambda: app.screen.query(ReplayBar), "the replay bar")
    await pilot.press("plus", "plus")
    assert replay.speed == 4
    await pilot.press("minus")
    assert replay.speed == 2
    bar = app.screen.query_one(ReplayBar)
    start, _ = bar._regions["speed"]
    await pilot.click(ReplayBar, offset=(bar.styles.padding.left + start, 0))
    assert replay.speed == 4
    await pilot.press("minus", "minus", "home")
    if replay.playing:
        await pilot.press("space")
    assert replay.speed == 1 and not replay.playing
    start, _ = bar._regions["toggle"]
    await pilot.click(ReplayBar, offset=(bar.styles.padding.left + start, 0))
    assert replay.playing  # 6 s to go at 1x: it cannot end meanwhile
    await pilot.click(ReplayBar, offset=(bar.styles.padding.left + start, 0))
    assert not replay.playing
    assert "replay: lock-redis.jsonl" in app.sub_title and "read-only" in app.sub_title
    await pilot.press("r")  # no launcher in a replay
    assert isinstance(app.screen, DashboardScreen)
    assert all(b.binding.action != "launch" for b in app.active_bindings.values() if b.enabled)
    await pilot.press("slash", "c", "l", "i", "space")  # the filter takes its keys as text
    assert app.screen.query_one("#filter").value == "cli "  # type: ignore[attr-defined]
    await pilot.press("escape")
    await pilot.press("v")
    await shown(pilot, lambda: isinstance(app.screen, RunScreen), "the run view")
    assert app.screen.query(ReplayBar), "the run view has the replay bar too"
    await pilot.press("end")
    await shown(pilot, lambda: "VIOLATED" in str(app.screen.query_one("#run-head").render()), "the verdict")
    assert not app.screen.query("#run-faults Button"), "no fault buttons in a replay"
