"""One lane per actor on a shared time axis, drawn with block characters.

Row 1 of a lane: ``█`` holding the lock (red when the hold ended lost or in a
crash), ``─`` waiting/polling, ``▒`` paused; ticks on top: ``●`` a write
accepted, ``✗`` rejected, ``▲`` a violation, ``✖`` a crash, ``⚡`` a session
lost; messages: ``✓`` committed, ``◧`` half stored, ``▶`` published, ``■`` applied,
``▷`` a notification attempt. Row 2: ``▀`` the lease (TTL) the store granted; ``┄`` the ZooKeeper
session SUSPENDED, ``╳`` LOST; ``┊`` where the verdict found the invariant broken.
A request's bar takes the colour of the instance that served it (the legend names
them). Fault windows shade every lane red.
"""

from __future__ import annotations

import math

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from app.tui.cells import now_ms
from app.tui.text import printable
from collectors.families.runs import Run
from collectors.runs import Lane

LABEL = 12
FAULT_BG = "#3c1212"
SPAN_STYLE = {
    "hold": ("█", "#4a8fe7"),
    "wait": ("─", "#6b7785"),
    "pause": ("▒", "#b07cff"),
    "lease": ("▀", "#7fb2ff"),
    "suspended": ("┄", "yellow"),
    "lost": ("╳", "#d05050"),
    "pay": ("─", "#8fa3b8"),
    "handle": ("━", "#5fa8a0"),
    "apply": ("━", "#c9a44a"),
    "request": ("━", "#8fa3b8"),
    "transfer": ("━", "#4a8fe7"),
    "branch": ("━", "#c9a44a"),
}
TONES = ("#4a8fe7", "#e0a040", "#5fbf6f", "#c678dd", "#56b6c2", "#d7c45a")
"""A request's colour: the instance that served it (its place in the run's tones)."""
OTHER_SPAN = ("╌", "#6b7785")
"""Any other operation in flight (a read, a write, a release)."""
LOST_STYLE = "#d05050"
VERDICT_LINE = ("┊", "bold red")
"""Down every lane's second row at the moment the verdict found the invariant broken."""
UNDER = ("lease", "suspended", "lost")
"""Drawn on a lane's second row: what the store or the session says, under what the client does."""
TICKS = {
    "write": ("●", "bold green"),
    "rejected": ("✗", "bold yellow"),
    "violation": ("▲", "bold red"),
    "crash": ("✖", "bold white"),
    "write?": ("?", "yellow"),
    "lost": ("⚡", "bold red"),
    "granted": ("◆", "green"),
    "refused": ("◇", "dim"),
    "charge": ("$", "bold green"),
    "replay": ("↺", "bold cyan"),
    "replayed": ("↺", "cyan"),
    "conflict": ("!", "bold yellow"),
    "mismatch": ("≠", "bold magenta"),
    "timeout": ("?", "#8fa3b8"),
    "error": ("✗", "bold red"),
    "emit": ("·", "#8fa3b8"),
    "duplicate": ("≡", "bold cyan"),
    "requeue": ("↩", "yellow"),
    "claim": ("⇲", "bold magenta"),
    "login": ("→", "bold green"),
    "logout": ("←", "bold #8fa3b8"),
    "kicked": ("⊘", "bold red"),
    "expired": ("⌛", "bold yellow"),
    "leak": ("‼", "bold red"),
    "prepared": ("p", "bold cyan"),
    "vote-no": ("n", "bold yellow"),
    "decision": ("◆", "bold green"),
    "abort": ("◇", "bold yellow"),
    "commit": ("✓", "bold green"),
    "rollback": ("↶", "bold #8fa3b8"),
    "recover": ("⟲", "bold cyan"),
    "blocked": ("⧗", "bold red"),
    "tried": ("t", "bold cyan"),
    "suspended": ("s", "bold yellow"),
    "fenced": ("⛔", "bold magenta"),
    "twice": ("‼", "bold red"),
    "committed": ("✓", "bold green"),
    "rolled-back": ("↶", "bold #8fa3b8"),
    "half": ("◧", "bold #c9a44a"),
    "published": ("▶", "bold cyan"),
    "marked": ("▬", "#8fa3b8"),
    "check": ("?", "bold #c9a44a"),
    "discarded": ("✗", "bold yellow"),
    "applied": ("■", "bold green"),
    "notify": ("▷", "#8fa3b8"),
    "acked": ("✓", "bold green"),
    "gave-up": ("✗", "bold red"),
    "reconciled": ("⟲", "bold magenta"),
}


SEVERE = frozenset({"violation", "crash", "kicked", "leak", "lost", "error", "rejected", "twice", "blocked"})
"""Ticks that win a cell they share with another."""


class Lanes(Widget):
    DEFAULT_CSS = """
    Lanes { height: auto; min-height: 3; }
    """
    run: reactive[Run | None] = reactive(None)
    followed: reactive[str] = reactive("")
    """A message followed across the lanes: its ticks lit, the other messages' dimmed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock_offset_ms = 0
        self._height = 0

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return self.height_for(width)

    def height_for(self, width: int) -> int:
        return 1 + 2 * len(self._lanes()) + len(self._legend(width))

    def watch_run(self) -> None:
        """A new run, or the same one grown: laid out again only when its height changes
        (a lane or a legend line more); otherwise only redrawn — a layout redraws the
        whole screen, and a running run changes a few times a second."""
        height = self.height_for(self.size.width)
        if height != self._height:
            self._height = height
            self.refresh(layout=True)
        else:
            self.refresh()

    def _legend(self, width: int) -> list[Text]:
        """What the lanes show, folded to the width (only the kinds this run uses)."""
        lines = [Text(" " * LABEL, no_wrap=True)]
        for what, kind, meaning in self.run.legend if self.run else ():
            if what == "span" and kind == "fault":
                char, style = "  ", f"on {FAULT_BG}"
            elif what == "line":
                char, style = VERDICT_LINE
            elif what == "tone":
                char, style = "━", self._tone(kind)
            else:
                char, style = (
                    SPAN_STYLE.get(kind, OTHER_SPAN) if what == "span" else TICKS.get(kind, ("•", "white"))
                )
            item = Text(no_wrap=True)
            item.append(char, style=style)
            item.append(f" {meaning}  ", style="dim")
            if len(lines[-1]) + len(item) > width and len(lines[-1]) > LABEL:
                lines.append(Text(" " * LABEL, no_wrap=True))
            lines[-1].append_text(item)
        return lines

    def _tone(self, instance: str) -> str:
        tones = [kind for what, kind, _ in (self.run.legend if self.run else ()) if what == "tone"]
        return TONES[tones.index(instance) % len(TONES)] if instance in tones else OTHER_SPAN[1]

    def _lanes(self) -> list[Lane]:
        return [lane for lane in (self.run.lanes if self.run else ()) if lane.actor != "runner"]

    def render(self) -> Text:
        run = self.run
        if run is None:
            return Text("no run selected", style="dim")
        lanes = self._lanes()
        width = max(20, self.size.width - LABEL - 1)
        now_t = 0
        if run.status == "running" and run.started_ms:
            now_t = now_ms() - run.started_ms + self.clock_offset_ms
        end = max(now_t, 1000)
        for lane in lanes:
            for s in lane.spans:
                end = max(end, s.end_ms if s.end_ms is not None else s.start_ms)
            for t in lane.ticks:
                end = max(end, t.at_ms)

        def col(t: int) -> int:
            return min(width - 1, max(0, int(t * (width - 1) / end)))

        faults = [
            (col(s.start_ms), col(s.end_ms if s.end_ms is not None else (now_t or end)))
            for lane in lanes
            for s in lane.spans
            if s.kind == "fault"
        ]
        verdict = run.verdict
        broke = col(verdict.at_ms) if verdict and not verdict.holds and verdict.at_ms is not None else None
        out = Text(no_wrap=True)
        out.append_text(self._axis(width, end))
        for lane in lanes:
            rows = [[" "] * width, [" "] * width]
            styles: list[list[str]] = [[""] * width, [""] * width]
            order = [k for k in SPAN_STYLE if k != "hold"] + ["hold"]  # holds drawn over the rest
            kinds = sorted(
                {s.kind for s in lane.spans} - {"fault"},
                key=lambda k: (k in SPAN_STYLE, order.index(k) if k in order else -1),
            )
            for kind in kinds:
                for s in lane.spans:
                    if s.kind != kind:
                        continue
                    char, style = SPAN_STYLE.get(kind, OTHER_SPAN)
                    if kind == "hold" and s.outcome in ("lost", "crashed"):
                        style = LOST_STYLE
                    elif s.tone:
                        style = self._tone(s.tone)
                    stop = s.end_ms if s.end_ms is not None else (now_t or end)
                    row = 1 if kind in UNDER else 0
                    for c in range(col(s.start_ms), col(stop) + 1):
                        rows[row][c] = char
                        styles[row][c] = style
            # in one cell the mark that tells what went wrong wins (drawn last): a logout by the
            # app is not hidden by the login that follows it a few ms later
            followed = self.followed
            for tick in sorted(
                lane.ticks, key=lambda t: (bool(followed) and t.msg == followed, t.kind in SEVERE)
            ):
                char, style = TICKS.get(tick.kind, ("•", "white"))
                if followed and tick.msg == followed:
                    style = f"{style} reverse"
                elif followed and tick.msg:
                    style = "#3a4450"
                rows[0][col(tick.at_ms)] = char
                styles[0][col(tick.at_ms)] = style
            if broke is not None and rows[1][broke] == " ":  # the store's own row wins
                rows[1][broke], styles[1][broke] = VERDICT_LINE
            for r in range(2):
                label = printable(lane.actor, LABEL - 1) if r == 0 else ""
                out.append(f"\n{label:<{LABEL}}", style="bold" if r == 0 else "")
                for c in range(width):
                    cell = Style.parse(styles[r][c]) if styles[r][c] else Style()
                    if any(a <= c <= b for a, b in faults):
                        cell += Style(bgcolor=FAULT_BG)
                    out.append(rows[r][c], style=cell)
        for line in self._legend(self.size.width):
            out.append("\n")
            out.append_text(line)
        return out

    @staticmethod
    def _axis(width: int, end: int) -> Text:
        axis = [" "] * width
        room = max(1, width // 8)  # labels that fit
        step = next(
            (s for s in (100, 250, 500, 1000, 2000, 5000, 10000, 30000, 60000) if end / s <= room),
            60000 * math.ceil(end / room / 60000),  # whole minutes, however long (or odd) the run
        )
        t = 0
        while t <= end:
            c = min(width - 1, int(t * (width - 1) / end))
            label = f"{t // 60000}m" if step % 60000 == 0 else f"{t / 1000:g}s"
            if c + len(label) <= width:  # a label that would be cut is left out
                axis[c : c + len(label)] = label
            t += step
        return Text(" " * LABEL + "".join(axis), style="dim")
