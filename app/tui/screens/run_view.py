"""The run view: one lane per actor on a shared time axis, the live faults, the verdict,
an ordering run's ring (its workers and each order's applied sequence), and a messaging
run's messages, each one's path followed across the lanes."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Footer, Header, Static

from app.tui.cells import status_style
from app.tui.model import Model
from app.tui.screens.live import LiveScreen
from app.tui.text import safe, set_cell_at
from app.tui.widgets.journeys import Journeys
from app.tui.widgets.lanes import Lanes
from app.tui.widgets.ring_panel import RingPanel
from collectors.families.rings import Ring
from collectors.families.runs import Run
from scenarios.kit.catalogue import ScenarioSpec


class RunScreen(LiveScreen):
    BINDINGS = [
        ("escape", "app.pop_screen", "Dashboard"),
        ("left_square_bracket", "older", "Older run"),
        ("right_square_bracket", "newer", "Newer run"),
        ("s", "stop", "Stop run"),
    ]
    DEFAULT_CSS = """
    #run-head { height: auto; padding: 0 1; }
    #run-faults { height: auto; padding: 0 1; }
    #run-faults Button { margin-right: 1; }
    #run-faults Static { width: auto; padding: 1 1 0 0; }
    #lanes-box { border: round $primary-background-lighten-2; height: auto; padding: 0 1; }
    #verdict { height: auto; padding: 0 1; border: round $primary-background-lighten-2; }
    #ops { height: auto; padding: 0 1; color: $text-muted; }
    #run-table { height: auto; max-height: 16; margin: 0 1; }

    """

    class FaultRequested(Message):
        def __init__(self, run_id: str, scenario: str, fault: str) -> None:
            super().__init__()
            self.run_id, self.scenario, self.fault = run_id, scenario, fault

    class StopRequested(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, model: Model, specs: dict[str, ScenarioSpec], run_id: str | None) -> None:
        super().__init__()
        self.model = model
        self.specs = specs
        self.run_id = run_id
        self._fault_key = ""
        self._table_key = ""
        self._table_rows: list[tuple[str, ...]] = []

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        with VerticalScroll():
            yield Static(id="run-head")
            yield Horizontal(id="run-faults")
            with VerticalScroll(id="lanes-box"):
                yield Lanes(id="lanes")
            yield Static(id="verdict")
            yield RingPanel(id="ring")
            yield DataTable(id="run-table", zebra_stripes=True, cursor_type="none")
            yield Journeys(id="journeys")
            yield Static(id="ops")
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(0.25, self._tick)

    def redraw(self) -> None:
        self.refresh_run()

    def _runs(self) -> list[Run]:
        runs = [r for r in self.model.entities["run"].values() if isinstance(r, Run)]
        return sorted(runs, key=lambda r: (r.started_ms or 0, r.id))

    def current(self) -> Run | None:
        runs = self._runs()
        if self.run_id is None and runs:
            self.run_id = runs[-1].id
        run = self.model.entities["run"].get(self.run_id or "")
        return run if isinstance(run, Run) else None

    def refresh_run(self) -> None:
        self.live(self._draw)

    def refresh_ring(self) -> None:
        """Only the ring changed (a worker's queue moved): redraw only it."""
        self.live(lambda: self._ring(self.current()))

    def _ring(self, run: Run | None) -> None:
        run_id = run.id if run is not None else None
        rings = self.model.entities["ring"].values()
        ring = next((r for r in rings if isinstance(r, Ring) and r.run == run_id), None)
        self.query_one("#ring", RingPanel).show(ring)

    def _draw(self) -> None:
        run = self.current()
        lanes = self.query_one("#lanes", Lanes)
        lanes.run = run  # laid out again when its height changes, else redrawn
        head = self.query_one("#run-head", Static)
        verdict = self.query_one("#verdict", Static)
        if run is None:
            head.update(safe("no runs yet: press r on the dashboard to start one", "dim"))
            verdict.update("")
            self._faults(None)
            self._table(None)
            self._ring(None)
            self.query_one(Journeys).show("", ())
            return
        text = safe(f"{run.status.upper()} ", "bold " + status_style(run.status))
        text.append_text(safe(f"{run.scenario}  {run.id}", "bold"))
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        text.append("\n")
        text.append_text(safe(params, "dim"))
        if run.faults:
            text.append_text(safe(f"   faults at start: {', '.join(run.faults)}", "yellow"))
        position = [r.id for r in self._runs()].index(run.id) + 1
        text.append_text(safe(f"   run {position}/{len(self._runs())} ([ ] switch)", "dim"))
        head.update(text)
        verdict.update(self._verdict(run))
        self.query_one("#ops", Static).update(safe(f"{run.ops} operations; last: {run.last_op}"))
        self._ring(run)
        self._table(run)
        journeys = self.query_one(Journeys)
        journeys.show(run.id, run.journeys, run.messages)
        lanes.followed = journeys.followed
        self._faults(run)

    @on(Journeys.Followed)
    def _follow(self, event: Journeys.Followed) -> None:
        self.query_one("#lanes", Lanes).followed = event.msg

    def _table(self, run: Run | None) -> None:
        """The scenario's own table (RedLock attempts, charges per order): rows are added,
        and a row that changed (an order charged meanwhile) is redrawn where it is."""
        table = self.query_one("#run-table", DataTable)
        rows = run.table if run is not None else ()
        key = f"{run.id if run else ''}|{rows[0] if rows else ''}"
        if key != self._table_key:
            self._table_key = key
            self._table_rows = []
            table.clear(columns=True)
            if rows:
                table.add_columns(*(safe(h, "bold") for h in rows[0]))
        shown = self._table_rows
        for i, row in enumerate(rows[1:]):
            if i >= len(shown):
                table.add_row(*(safe(c) for c in row))
                shown.append(row)
            elif shown[i] != row:
                for j, cell in enumerate(row):
                    if j >= len(shown[i]) or shown[i][j] != cell:  # a longer cell widens its column
                        set_cell_at(table, i, j, safe(cell))
                shown[i] = row
        table.display = bool(rows)

    def _verdict(self, run: Run) -> Text:
        if run.error:
            return safe(f"error: {run.error}", "bold red")
        v = run.verdict
        if v is None:
            return safe("judging live… the verdict comes when the run ends", "dim")
        text = safe(
            ("✔ HELD — " if v.holds else "✘ VIOLATED — ") + v.invariant,
            "bold green" if v.holds else "bold red",
        )
        lines = [safe(v.summary)]
        if v.actors:
            lines.append(safe(f"actors: {', '.join(v.actors)}", "bold"))
        if v.keys:
            lines.append(safe(f"keys: {', '.join(v.keys)}"))
        lines += [safe(f"• {finding}", "yellow") for finding in v.findings]
        for line in lines:
            text.append("\n")
            text.append_text(line)
        text.no_wrap = False
        return text

    def _faults(self, run: Run | None) -> None:
        key = f"{run.id}|{run.status}" if run else ""
        if key == self._fault_key:
            return
        self._fault_key = key
        box = self.query_one("#run-faults", Horizontal)
        box.remove_children()
        if run is None or run.status != "running" or run.scenario not in self.specs:
            return
        spec = self.specs[run.scenario]
        live = spec.faults if spec.live_faults else ()
        box.mount_all(
            [Static(safe("inject now: " if live else "", "dim"))]
            + [Button(f.name, id=f"inject-{f.name}", variant="error", tooltip=f.help) for f in live]
            + [Button("stop", id="stop-run")]
        )

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        run = self.current()
        if run is None:
            return
        button_id = event.button.id or ""
        if button_id.startswith("inject-"):
            self.post_message(self.FaultRequested(run.id, run.scenario, button_id.removeprefix("inject-")))
        elif button_id == "stop-run":
            self.post_message(self.StopRequested(run.id))

    def _tick(self) -> None:
        run = self.current()
        if run is not None and run.status == "running":
            self.query_one("#lanes", Lanes).refresh()

    def _step(self, delta: int) -> None:
        ids = [r.id for r in self._runs()]
        if not ids:
            return
        i = ids.index(self.run_id) if self.run_id in ids else len(ids) - 1
        self.run_id = ids[max(0, min(len(ids) - 1, i + delta))]
        self.refresh_run()

    def action_older(self) -> None:
        self._step(-1)

    def action_newer(self) -> None:
        self._step(1)

    def action_stop(self) -> None:
        run = self.current()
        if run is not None and run.status == "running":
            self.post_message(self.StopRequested(run.id))
