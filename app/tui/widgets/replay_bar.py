"""The replay bar: where the playhead is in a recording, and the controls to move it.

One line at the bottom of every screen, above the footer, of ``coordscope replay``::

    ▶ playing  2×  14:03:22  0:12 / 1:30  ━━━━━━━━━━●─────────────  replay: read-only

Clicking the state toggles play/pause, clicking the speed steps it up (after
16× it starts again at 0.25×), clicking the track seeks to that moment. The
keys are the app's (space, + / -, ← / →, home / end), shown in the footer.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import events
from textual.widget import Widget

from app.replay import SPEEDS, Replay


def clock_time(ms: int) -> str:
    """The recorded moment as the local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def duration(ms: int) -> str:
    """0:07, 1:30, 1:02:03."""
    s = max(0, ms) // 1000
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def speed_text(speed: float) -> str:
    return f"{speed:g}×"


class ReplayBar(Widget):
    DEFAULT_CSS = """
    ReplayBar { height: 1; padding: 0 1; background: $boost; }
    """

    def __init__(self, replay: Replay, *, id: str | None = "replay-bar") -> None:
        super().__init__(id=id)
        self.replay = replay
        self._regions: dict[str, tuple[int, int]] = {}
        """x ranges (start, end) of the clickable parts, as last drawn."""

    def on_mount(self) -> None:
        self.set_interval(0.2, self.refresh)

    def render(self) -> Text:
        st = self.replay.status()
        out = Text(no_wrap=True, overflow="ellipsis")
        regions: dict[str, tuple[int, int]] = {}

        def part(name: str, text: str, style: str = "") -> None:
            start = len(out.plain)
            out.append(text, style)
            regions[name] = (start, len(out.plain))

        state = st["state"]
        icon = {"playing": "▶ playing", "paused": "‖ paused", "ended": "■ ended"}[state]
        part("toggle", icon, "bold green" if state == "playing" else "bold yellow")
        out.append("  ")
        part("speed", speed_text(st["speed"]), "bold")
        out.append("  ")
        out.append(clock_time(st["position_ms"]), "bold cyan")
        out.append(f"  {duration(st['elapsed_ms'])} / {duration(st['duration_ms'])}  ", "")
        tail = "  replay: read-only"
        room = self.content_size.width - len(out.plain) - len(tail)
        if room >= 10:
            total = max(1, st["duration_ms"])
            head = min(room - 1, round(st["elapsed_ms"] * (room - 1) / total))
            start = len(out.plain)
            out.append("━" * head, "cyan")
            out.append("●", "bold cyan")
            out.append("─" * (room - 1 - head), "dim")
            regions["track"] = (start, start + room)
        out.append(tail, "bold magenta")
        self._regions = regions
        return out

    def on_click(self, event: events.Click) -> None:
        x = event.x - self.styles.padding.left
        hit = [(name, start, end) for name, (start, end) in self._regions.items() if start <= x < end]
        if not hit:
            return
        name, start, end = hit[0]
        event.stop()
        replay = self.replay
        if name == "toggle":
            replay.toggle()
        elif name == "speed":
            i = SPEEDS.index(replay.speed)
            replay.set_speed(SPEEDS[(i + 1) % len(SPEEDS)])
        elif name == "track":
            rec = replay.recording
            fraction = (x - start) / max(1, end - start - 1)
            replay.seek(rec.start_ms + round(fraction * (rec.end_ms - rec.start_ms)))
        self.refresh()
