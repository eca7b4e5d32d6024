"""``coordscope replay FILE``: the same TUI, fed by a recording instead of collectors.

Wiring only: the dashboard and the run view are the live ones (the bus reads
the replay as it reads the live state); this adds the replay bar to each of
them, the transport keys, and turns off what would change a store.
"""

from __future__ import annotations

from pathlib import Path

from textual import events, on
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input

from app.core import Core
from app.replay import Replay
from app.tui.app import CoordscopeApp
from app.tui.cells import set_clock
from app.tui.screens.live import LiveScreen
from app.tui.widgets.replay_bar import ReplayBar

STEP_MS = 1000


class ReplayApp(CoordscopeApp):
    SPEED = Binding.Group("speed", compact=True)
    STEP = Binding.Group("±1s", compact=True)
    EDGE = Binding.Group("start/end")
    # priority: the focused table would take ←/→/home/end for its cursor otherwise
    BINDINGS = [
        Binding("space", "replay_toggle", "Play/pause", priority=True),
        Binding("minus", "replay_speed(-1)", "Slower", key_display="-", priority=True, group=SPEED),
        Binding("plus,equals_sign", "replay_speed(1)", "Faster", key_display="+", priority=True, group=SPEED),
        Binding("left", f"replay_step({-STEP_MS})", "-1s", key_display="←", priority=True, group=STEP),
        Binding("right", f"replay_step({STEP_MS})", "+1s", key_display="→", priority=True, group=STEP),
        Binding("home", "replay_edge(0)", "Start", priority=True, group=EDGE),
        Binding("end", "replay_edge(1)", "End", priority=True, group=EDGE),
    ]

    def __init__(self, core: Core) -> None:
        assert core.replay is not None, "ReplayApp replays: give it a core made with a Replay"
        super().__init__(core)
        self.replay: Replay = core.replay

    @on(events.Mount)
    def _replay_mounted(self) -> None:
        # countdowns (TTLs, leases) count against the recorded moment on screen
        set_clock(self.replay.position_ms)
        self.screen_change_signal.subscribe(self, self._with_bar)
        self._with_bar(self.screen)

    @on(events.Unmount)
    def _replay_unmounted(self) -> None:
        set_clock(None)

    def _with_bar(self, screen: Screen[object], composed: bool = False) -> None:
        """Put the replay bar above the footer of the dashboard and the run view."""
        if not isinstance(screen, LiveScreen) or screen.query(ReplayBar):
            return
        footers = screen.query(Footer)
        if not footers and not composed:
            screen.call_after_refresh(self._with_bar, screen, True)  # not composed yet
            return
        screen.mount(ReplayBar(self.replay), before=footers.first() if footers else None)

    def _set_subtitle(self) -> None:
        parts = [f"replay: {Path(self.replay.recording.name).name}", "read-only"]
        if self.paused:
            parts.append("FROZEN (p to resume)")
        self.sub_title = " · ".join(parts)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "launch":
            return False  # nothing to launch: a recording is read-only
        # typing in the filter: the keys are text, not transport
        return not (action.startswith("replay_") and isinstance(self.focused, Input))

    def _moved(self) -> None:
        for bar in self.screen.query(ReplayBar):
            bar.refresh()

    def action_replay_toggle(self) -> None:
        self.replay.toggle()
        self._moved()

    def action_replay_speed(self, steps: int) -> None:
        self.replay.faster(steps)
        self._moved()

    def action_replay_step(self, delta_ms: int) -> None:
        self.replay.step(delta_ms)
        self._moved()

    def action_replay_edge(self, end: int) -> None:
        rec = self.replay.recording
        self.replay.seek(rec.end_ms if end else rec.start_ms)
        self._moved()
