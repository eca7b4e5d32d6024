"""One entity in full, as its family describes it: a lock's grants and replicas or its
chain of contenders, a mark's claim, a service's process... Opened with enter on any
row of the dashboard; live (countdowns tick, changes show as they happen)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from app.tui.cells import render_lines
from app.tui.model import Model
from app.tui.text import safe
from collectors.families.base import Family


class EntityScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Close"), ("enter", "dismiss", "Close")]
    DEFAULT_CSS = """
    EntityScreen { align: center middle; }
    #entity { width: 120; height: auto; max-height: 90%; border: thick $primary;
              background: $surface; padding: 1 2; }
    """

    def __init__(self, model: Model, family: type[Family], entity_id: str) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.entity_id = entity_id

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="entity"):
            yield Static(id="entity-body")

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(0.25, self.redraw)

    def redraw(self) -> None:
        entity = self.model.entities[self.family.kind].get(self.entity_id)
        body = self.query_one("#entity-body", Static)
        if entity is None:
            body.update(safe(f"this {self.family.kind} is gone — esc closes", "dim"))
        else:
            body.update(render_lines(self.family.detail(entity)))
