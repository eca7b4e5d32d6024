"""SVG snapshots of the screens whose content does not depend on live data."""

from __future__ import annotations

from typing import Any

from textual.app import App, ComposeResult
from textual.widgets import Static

from app.tui.screens.help import HelpScreen
from app.tui.screens.launcher import LauncherScreen
from scenarios.runner import catalogue


class Still(App[None]):
    """Nothing but the screen under test (no clock, no collectors)."""

    def __init__(self, screen: Any) -> None:
        super().__init__()
        self._first = screen

    def compose(self) -> ComposeResult:
        yield Static("coordscope")

    def on_mount(self) -> None:
        self.push_screen(self._first)


def test_launcher(snap_compare: Any) -> None:
    assert snap_compare(Still(LauncherScreen(catalogue(), faults=["pause-holder"])), terminal_size=(130, 40))


def test_help(snap_compare: Any) -> None:
    assert snap_compare(Still(HelpScreen()), terminal_size=(110, 40))


async def test_every_scenario_has_a_button_on_screen() -> None:
    """However many scenarios there are, each one's button shows whole, inside the launcher."""
    app = Still(LauncherScreen(catalogue()))
    async with app.run_test(size=(130, 40)) as pilot:
        await pilot.pause()
        launcher = app.screen.query_one("#launcher")
        names = [s.name for s in catalogue()]
        for name in names:
            button = app.screen.query_one(f"#pick-{name}")
            inside = launcher.region.contains_region(button.region)
            assert inside and button.region.width >= len(name), (name, button.region, launcher.region)
        await pilot.click(f"#pick-{names[-1]}")
        await pilot.pause()
        assert isinstance(app.screen, LauncherScreen) and app.screen.selected == names[-1]
