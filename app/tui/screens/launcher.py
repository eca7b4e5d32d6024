"""The scenario launcher: pick a scenario, set its variants and parameters, tick faults, run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from app.tui.text import safe
from scenarios.kit.catalogue import ScenarioSpec


@dataclass(frozen=True)
class LaunchRequest:
    scenario: str
    params: dict[str, str]
    faults: list[str]


class LauncherScreen(ModalScreen[LaunchRequest | None]):
    BINDINGS = [("escape", "dismiss_none", "Close"), ("ctrl+r", "launch", "Run")]
    DEFAULT_CSS = """
    LauncherScreen { align: center middle; }
    #launcher { width: 120; height: auto; max-height: 95%; border: thick $primary;
                background: $surface; padding: 0 2; }
    /* a grid: every scenario's button shows, in rows, however many there are */
    #scenario-buttons { layout: grid; grid-size: 5; grid-gutter: 0 1; height: auto; margin-bottom: 1; }
    #scenario-buttons Button { width: 1fr; margin: 0; }
    #summary { color: $text-muted; height: auto; margin-bottom: 1; }
    #form { height: auto; }
    .param { height: auto; }
    .param Label { width: 14; }
    .param Select, .param Input { width: 18; background: $boost; }
    .param .help { width: 1fr; height: auto; padding-left: 2; color: $text-muted; }
    #faults { height: auto; margin-top: 1; }
    #faults Checkbox { height: 1; }
    #launch-error { color: $error; height: 2; margin-top: 1; }  /* fixed: Run must not move */
    #actions { height: 1; align: right middle; margin: 1 0; }
    #actions Button { margin-left: 2; }
    """

    def __init__(
        self,
        specs: list[ScenarioSpec],
        selected: str | None = None,
        faults: list[str] | None = None,
        check: Callable[[LaunchRequest], str | None] | None = None,
        remembered: Mapping[str, LaunchRequest] | None = None,
    ) -> None:
        """``remembered``: the last request run per scenario, shown again when it is picked;
        ``faults`` (the palette's "Run X with F") replace the remembered ones of ``selected``."""
        super().__init__()
        self.check = check
        self.specs = {s.name: s for s in specs}
        self.selected = selected if selected in self.specs else next(iter(self.specs))
        self.remembered = dict(remembered or {})
        if faults:
            last = self.remembered.get(self.selected)
            self.remembered[self.selected] = LaunchRequest(self.selected, last.params if last else {}, faults)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="launcher"):
            yield Static("Run a scenario — ctrl+r runs it, esc closes", classes="title")
            with Container(id="scenario-buttons"):
                for name in self.specs:
                    chosen = name == self.selected
                    yield Button(
                        name, id=f"pick-{name}", compact=True, variant="primary" if chosen else "default"
                    )
            yield Static(id="summary")
            yield Vertical(id="form")
            yield Static(id="launch-error")
            with Horizontal(id="actions"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Run", id="run", variant="success", compact=True)

    async def on_mount(self) -> None:
        await self._show(self.selected)

    async def _show(self, name: str) -> None:
        self.selected = name
        spec = self.specs[name]
        for button in self.query("#scenario-buttons Button").results(Button):
            button.variant = "primary" if button.id == f"pick-{name}" else "default"
        summary = safe(f"{spec.title}: {spec.summary}", wrap=True)
        summary.append("\n")
        summary.append_text(safe(f"invariant: {spec.invariant}", "italic", wrap=True))
        self.query_one("#summary", Static).update(summary)
        last = self.remembered.get(name)
        values = last.params if last else {}
        ticked = set(last.faults) if last else set()
        form = self.query_one("#form", Vertical)
        await form.remove_children()  # gone before the next form's ids (param-clients, ...) arrive
        rows = []
        for p in spec.all_params():
            widget: Select[str] | Input
            if p.choices:
                options = [(c, c) for c in p.choices]
                widget = Select(
                    options,
                    value=values.get(p.name, p.default),
                    allow_blank=False,
                    compact=True,
                    id=f"param-{p.name}",
                )
            else:
                widget = Input(
                    value=values.get(p.name, p.default), type="integer", compact=True, id=f"param-{p.name}"
                )
            rows.append(
                Horizontal(
                    Label(p.name), widget, Static(safe(p.help, wrap=True), classes="help"), classes="param"
                )
            )
        heading = (
            "faults at start (or inject them live from the run view):"
            if spec.faults
            else "no faults to inject"
        )
        faults: list[Static | Checkbox] = [Static(heading)]
        faults += [
            Checkbox(
                f"{f.name} — {f.help}",
                value=f.name in ticked,
                compact=True,
                id=f"fault-{f.name}",
            )
            for f in spec.faults
        ]
        await form.mount_all([*rows, Vertical(*faults, id="faults")])

    @on(Button.Pressed)
    async def _pressed(self, event: Button.Pressed) -> None:
        button_id = event.button.id or ""
        if button_id.startswith("pick-"):
            await self._show(button_id.removeprefix("pick-"))
        elif button_id == "cancel":
            self.dismiss(None)
        elif button_id == "run":
            self._launch()

    def action_launch(self) -> None:
        self._launch()

    def _launch(self) -> None:
        spec = self.specs[self.selected]
        params: dict[str, str] = {}
        for p in spec.all_params():
            widget = self.query_one(f"#param-{p.name}")
            value = widget.value if isinstance(widget, (Select, Input)) else p.default
            params[p.name] = str(value)
        faults = [f.name for f in spec.faults if self.query_one(f"#fault-{f.name}", Checkbox).value]
        request = LaunchRequest(spec.name, params, faults)
        problem = self.check(request) if self.check else None
        if problem:
            self.show_error(problem)
            return
        self.dismiss(request)

    def show_error(self, message: str) -> None:
        self.query_one("#launch-error", Static).update(safe(message))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
