"""The dashboard: nodes, locks, sessions, marks, transactions, queues/keys and the event log."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from app.tui.model import Model
from app.tui.screens.live import LiveScreen
from app.tui.screens.lock_detail import LockScreen
from app.tui.text import printable, safe
from app.tui.widgets import columns
from app.tui.widgets.columns import clock
from app.tui.widgets.entity_table import EntityTable
from collectors.events import Logged

TABLES = {
    "lock": ("locks", "Locks", columns.LOCKS, "name"),
    "session": ("sessions", "Sessions", columns.SESSIONS, "id"),
    "mark": ("marks", "Idempotency marks", columns.MARKS, "key"),
    "transaction": ("transactions", "Transactions", columns.TRANSACTIONS, "id"),
    "node": ("nodes", "Nodes", columns.NODES, "id"),
    "key": ("keys", "Queues and other keys", columns.KEYS, "key"),
}
LEVEL_STYLE = {"warn": "yellow", "error": "bold red"}


class Panel(Vertical):
    DEFAULT_CSS = """
    Panel { border: round $primary-background-lighten-2; height: auto; }
    Panel > .panel-title { color: $text-muted; text-style: bold; }
    Panel > .panel-empty { color: $text-muted; }
    """


class DashboardScreen(LiveScreen):
    AUTO_FOCUS = "#locks"
    BINDINGS = [
        ("slash", "filter", "Filter"),
        ("escape", "clear_filter", "Clear filter"),
    ]

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model
        self.needle = ""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Input(placeholder="filter: type to narrow every table (esc clears)", id="filter")
        yield from self._panel("node")
        with Horizontal(id="main"):
            with VerticalScroll(id="left"):
                for kind in ("lock", "session", "mark", "transaction"):
                    yield from self._panel(kind)
            with VerticalScroll(id="right"):
                with Panel(id="panel-log"):
                    yield Static("Event log", classes="panel-title")
                    # min_width: RichLog renders at least 78 cells wide by default, which
                    # crops every wrapped line in a narrower panel
                    yield RichLog(id="log", max_lines=500, markup=False, wrap=True, min_width=20)
                yield from self._panel("key")
        yield Footer()

    def _panel(self, kind: str) -> ComposeResult:
        table_id, title, cols, sort_column = TABLES[kind]
        with Panel(id=f"panel-{table_id}"):
            yield Static(title, classes="panel-title", id=f"title-{table_id}")
            yield EntityTable(cols, sort_column=sort_column, id=table_id)
            yield Static("nothing here yet", classes="panel-empty", id=f"empty-{table_id}")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        super().on_mount()
        self.set_interval(0.25, self._tick)

    def redraw(self) -> None:
        self.apply(set(TABLES), list(self.model.log), reset_log=True)

    def apply(self, kinds: set[str], lines: list[Logged], reset_log: bool = False) -> None:
        self.live(lambda: self._apply(kinds, lines, reset_log))

    def _apply(self, kinds: set[str], lines: list[Logged], reset_log: bool) -> None:
        with self.app.batch_update():
            for kind in kinds & set(TABLES):
                table_id, title, _, _ = TABLES[kind]
                entities = list(self.model.entities[kind].values())
                table = self.query_one(f"#{table_id}", EntityTable)
                table.sync(entities, self.needle)
                shown = table.row_count
                count = f"{title} ({shown}" + (f" of {len(entities)})" if shown != len(entities) else ")")
                self.query_one(f"#title-{table_id}", Static).update(safe(count))
                self.query_one(f"#empty-{table_id}", Static).display = not entities
            log = self.query_one("#log", RichLog)
            if reset_log:
                log.clear()
            for line in lines:
                if self.needle and self.needle not in printable(f"{line.source} {line.text}").lower():
                    continue
                text = safe(f"{clock(line.at_ms)} ", "dim", wrap=True)
                text.append_text(safe(f"{line.source:<10} ", "cyan"))
                text.append_text(safe(line.text, LEVEL_STYLE.get(line.level, "")))
                log.write(text)

    def _tick(self) -> None:
        for kind in ("lock", "session", "mark"):
            self.query_one(f"#{TABLES[kind][0]}", EntityTable).tick()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.needle = ""
        self.redraw()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.needle = event.value.strip().lower()
            self.redraw()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "locks" and event.row_key.value is not None:
            self.app.push_screen(LockScreen(self.model, str(event.row_key.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.query_one("#locks", EntityTable).focus()
