"""A run's messages, each with its path across the lanes; choose one to follow it.

One row per message (outbox rows, half messages, notifications): its id, how many
steps, and its path (``committed A → published relay ×2 → applied B-1``). Enter on a
row follows it: its steps are listed in full below (when, who, what, in their words)
and the lanes light its ticks and dim the other messages'. Enter again lets it go.
Rows are added as messages appear and redrawn where their path grew; the cursor stays
on the message it was on.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from app.tui.text import safe, set_cell_at
from collectors.journeys import Journey

PATH_WIDTH = 110


class Journeys(Vertical):
    DEFAULT_CSS = """
    Journeys { height: auto; display: none; }
    Journeys > #journey-title { height: auto; color: $text-muted; padding: 0 1; }
    Journeys > DataTable { height: auto; max-height: 12; margin: 0 1; }
    Journeys > #journey-steps {
        height: auto; padding: 0 1; border: round $primary-background-lighten-2; display: none;
    }
    """

    class Followed(Message):
        def __init__(self, msg: str) -> None:
            super().__init__()
            self.msg = msg

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: list[tuple[str, str, bool]] = []
        self._run = ""
        self.followed = ""
        self._journeys: dict[str, Journey] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="journey-title")
        yield DataTable(id="journey-list", zebra_stripes=True, cursor_type="row")
        yield Static(id="journey-steps")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(
            safe("message", "bold"), safe("steps", "bold"), safe("path", "bold")
        )

    def show(self, run_id: str, journeys: tuple[Journey, ...], total: int = 0) -> None:
        table = self.query_one(DataTable)
        self.query_one("#journey-title", Static).update(safe(title(len(journeys), total), "dim"))
        if run_id != self._run:
            self._run, self._shown, self.followed = run_id, [], ""
            table.clear()
        self._journeys = {j.msg: j for j in journeys}
        for i, j in enumerate(journeys):
            row = (j.msg, j.path, j.bad)
            cells = (
                safe(j.msg, "bold red" if j.bad else "bold"),
                safe(str(len(j.steps))),
                safe(_cut(j.path), "red" if j.bad else ""),
            )
            if i >= len(self._shown):
                table.add_row(*cells, key=str(i))
                self._shown.append(row)
            elif self._shown[i] != row:
                for c, cell in enumerate(cells):
                    set_cell_at(table, i, c, cell)
                self._shown[i] = row
        self.display = bool(journeys)
        self._steps()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        i = event.cursor_row
        if 0 <= i < len(self._shown):
            msg = self._shown[i][0]
            self.followed = "" if self.followed == msg else msg
            self._steps()
            self.post_message(self.Followed(self.followed))

    def _steps(self) -> None:
        box = self.query_one("#journey-steps", Static)
        journey = self._journeys.get(self.followed)
        box.display = journey is not None
        if journey is None:
            return
        text = safe(f"message {journey.msg}: ", "bold")
        text.append_text(safe(journey.path))
        for s in journey.steps:
            text.append("\n")
            text.append_text(safe(f"{s.at_ms / 1000:8.3f}s ", "dim"))
            text.append_text(safe(f"{s.actor:<10} ", "bold"))
            text.append_text(
                safe(f"{s.what:<12} ", "red" if s.what in ("twice", "violation", "error") else "cyan")
            )
            text.append_text(safe(s.note))
        box.update(text)


def title(shown: int, total: int) -> str:
    many = (
        f"{shown} of {total}: every one something unusual happened to, then the latest"
        if total > shown
        else f"{shown}"
    )
    return f"messages ({many}) — enter on one to follow its whole path (its marks light up on the lanes)"


def _cut(path: str) -> str:
    return path if len(path) <= PATH_WIDTH else path[: PATH_WIDTH - 1] + "…"
