"""The dashboard: a panel per family (from the registry), and the live event log."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from app.tui.model import Model
from app.tui.screens.entity_detail import EntityScreen
from app.tui.screens.live import LiveScreen
from app.tui.text import printable, safe
from app.tui.widgets.entity_table import EntityTable
from collectors.events import Logged
from collectors.families import REGISTRY, Family
from collectors.families.nodes import clock

LEVEL_STYLE = {"warn": "yellow", "error": "bold red"}
SHOWN = {f.kind: f for f in REGISTRY if f.panel != "none" and f.columns}
"""The families with a table on the dashboard, in the registry's order."""


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
        for family in SHOWN.values():
            if family.panel == "top":
                yield from self._panel(family)
        with Horizontal(id="main"):
            with VerticalScroll(id="left"):
                for family in SHOWN.values():
                    if family.panel == "main":
                        yield from self._panel(family)
            with VerticalScroll(id="right"):
                with Panel(id="panel-log"):
                    yield Static("Event log", classes="panel-title")
                    # min_width: RichLog renders at least 78 cells wide by default, which
                    # crops every wrapped line in a narrower panel
                    yield RichLog(id="log", max_lines=500, markup=False, wrap=True, min_width=20)
                for family in SHOWN.values():
                    if family.panel == "side":
                        yield from self._panel(family)
        yield Footer()

    def _panel(self, family: type[Family]) -> ComposeResult:
        with Panel(id=f"panel-{family.plural}"):
            yield Static(family.title, classes="panel-title", id=f"title-{family.plural}")
            yield EntityTable(family, id=family.plural)
            yield Static(family.empty, classes="panel-empty", id=f"empty-{family.plural}")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        super().on_mount()
        self.set_interval(0.25, self._tick)

    def redraw(self) -> None:
        self.apply(set(SHOWN), list(self.model.log), reset_log=True)

    def apply(self, kinds: set[str], lines: list[Logged], reset_log: bool = False) -> None:
        self.live(lambda: self._apply(kinds, lines, reset_log))

    def _apply(self, kinds: set[str], lines: list[Logged], reset_log: bool) -> None:
        with self.app.batch_update():
            for kind in kinds & set(SHOWN):
                family = SHOWN[kind]
                entities = list(self.model.entities[kind].values())
                table = self.query_one(f"#{family.plural}", EntityTable)
                table.sync(entities, self.needle)
                shown = table.row_count
                count = f"{family.title} ({shown}" + (
                    f" of {len(entities)})" if shown != len(entities) else ")"
                )
                self.query_one(f"#title-{family.plural}", Static).update(safe(count))
                self.query_one(f"#empty-{family.plural}", Static).display = not entities
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
        for table in self.query(EntityTable):
            table.tick()

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
        table = event.data_table
        if isinstance(table, EntityTable) and event.row_key.value is not None:
            self.app.push_screen(EntityScreen(self.model, table.family, str(event.row_key.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.query_one("#locks", EntityTable).focus()
