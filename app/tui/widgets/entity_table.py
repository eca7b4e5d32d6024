"""A family's table: a DataTable of its entities kept in step by row key (never cleared
and refilled), with the family's columns.

Each sync adds new rows, updates only the cells that changed and removes
rows whose entity is gone — inside ``app.batch_update()`` so the screen
repaints once (the pattern of Dolphie's process list). Countdown cells (a
TTL, a lease) are redrawn by :meth:`EntityTable.tick` between events. A
table shows at most :data:`MAX_ROWS` rows; its panel's title says how many
there are (`/` filters among all of them).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from rich.text import Text
from textual.widgets import DataTable

from app.tui.cells import now_ms, render
from app.tui.text import printable, set_cell
from collectors.events import Entity
from collectors.families.base import Cell, Family

MAX_ROWS = 500
"""Rows a table shows (the first by id, then sorted by its column): a family of 20,000
entities would cost a row of cells each per change."""


class EntityTable(DataTable[Text]):
    DEFAULT_CSS = """
    EntityTable { height: auto; max-height: 100%; }
    """

    def __init__(self, family: type[Family], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.family = family
        self._columns = family.columns
        self._sort_column = family.sort or family.columns[0].key
        self._rows: dict[str, tuple[str, ...]] = {}
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._entities: dict[str, Entity] = {}

    def on_mount(self) -> None:
        for col in self._columns:
            self.add_column(col.label, key=col.key, width=col.width)

    def entity_at_cursor(self) -> Entity | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return self._entities.get(str(row_key.value))

    def _texts(self, cells: tuple[Cell, ...], stale: bool, now: int) -> list[Text]:
        out = []
        for col, cell in zip(self._columns, cells, strict=True):
            text = render(cell, col.limit, now)
            if stale:
                text.stylize("dim italic")
            out.append(text)
        return out

    def sync(self, entities: Iterable[Entity], needle: str = "") -> None:
        wanted = [e for e in entities if not needle or needle in _haystack(e)]
        if len(wanted) > MAX_ROWS:
            wanted = heapq.nsmallest(MAX_ROWS, wanted, key=lambda e: e.id)
        keep = {e.id for e in wanted}
        for row_id in list(self._rows):
            if row_id not in keep:
                self.remove_row(row_id)
                del self._rows[row_id]
                self._cells.pop(row_id, None)
                self._entities.pop(row_id, None)
        added = False
        now = now_ms()
        for entity in wanted:
            cells = self.family.row(entity)
            texts = self._texts(cells, bool(getattr(entity, "stale", False)), now)
            plain = tuple(t.plain + str(t.style) + str(t.spans) for t in texts)
            self._entities[entity.id] = entity
            self._cells[entity.id] = cells
            if entity.id not in self._rows:
                self.add_row(*texts, key=entity.id)
                added = True
            elif self._rows[entity.id] != plain:
                before = self._rows[entity.id]
                for i, col in enumerate(self._columns):
                    if before[i] != plain[i]:
                        set_cell(self, entity.id, col.key, texts[i])
            self._rows[entity.id] = plain
        if added and len(wanted) > 1:
            self.sort(self._sort_column, key=lambda cell: cell.plain.lower())

    def tick(self) -> None:
        """Redraw the cells that count (TTLs and leases down, ages up)."""
        now = now_ms()
        for row_id, cells in self._cells.items():
            for i, cell in enumerate(cells):
                if cell.until_ms is None and cell.since_ms is None:
                    continue
                text = render(cell, self._columns[i].limit, now)
                plain = self._rows[row_id]
                key = text.plain + str(text.style) + str(text.spans)
                if plain[i] != key:
                    self.update_cell(row_id, self._columns[i].key, text)
                    self._rows[row_id] = (*plain[:i], key, *plain[i + 1 :])


def _haystack(entity: Entity) -> str:
    return printable(repr(entity)).lower()
