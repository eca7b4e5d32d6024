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
