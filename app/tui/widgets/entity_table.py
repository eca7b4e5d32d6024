"""A DataTable of entities kept in step by row key (never cleared and refilled).

Each sync adds new rows, updates only the cells that changed and removes
rows whose entity is gone — inside ``app.batch_update()`` so the screen
repaints once (the pattern of Dolphie's process list).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from app.tui.text import fmt_ms, printable, safe
from collectors.events import Entity


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[Any], Text]
    width: int | None = None
    ticking: bool = False
    """Recomputed every tick (TTL countdowns)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def ttl_text(expires_at_ms: int | None, ttl_ms: int | None, offset_ms: int = 0) -> Text:
    if expires_at_ms is None:
        return safe(fmt_ms(ttl_ms))
    left = expires_at_ms - now_ms() - offset_ms
    return safe(fmt_ms(left), "bold yellow" if left < 1000 else "")


class EntityTable(DataTable[Text]):
    DEFAULT_CSS = """
    EntityTable { height: auto; max-height: 100%; }
    """

    def __init__(self, columns: list[Column], *, sort_column: str, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._columns = columns
        self._sort_column = sort_column
        self._rows: dict[str, tuple[str, ...]] = {}
        self._entities: dict[str, Entity] = {}

    def on_mount(self) -> None:
        for col in self._columns:
            self.add_column(col.label, key=col.key, width=col.width)

    def entity_at_cursor(self) -> Entity | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return self._entities.get(str(row_key.value))

    def sync(self, entities: Iterable[Entity], needle: str = "") -> None:
        wanted = [e for e in entities if not needle or needle in _haystack(e)]
        keep = {e.id for e in wanted}
        for row_id in list(self._rows):
            if row_id not in keep:
                self.remove_row(row_id)
                del self._rows[row_id]
                self._entities.pop(row_id, None)
        added = False
        for entity in wanted:
            cells = [col.cell(entity) for col in self._columns]
            plain = tuple(c.plain + str(c.style) for c in cells)
            self._entities[entity.id] = entity
            if entity.id not in self._rows:
                self.add_row(*cells, key=entity.id)
                added = True
            elif self._rows[entity.id] != plain:
                before = self._rows[entity.id]
                for i, col in enumerate(self._columns):
                    if before[i] != plain[i]:
                        self.update_cell(entity.id, col.key, cells[i], update_width=True)
            self._rows[entity.id] = plain
        if added and len(wanted) > 1:
            self.sort(self._sort_column, key=lambda cell: cell.plain.lower())

    def tick(self) -> None:
        """Recompute the ticking cells (TTL countdowns)."""
        ticking = [c for c in self._columns if c.ticking]
        if not ticking:
            return
        for row_id, entity in self._entities.items():
            for col in ticking:
                cell = col.cell(entity)
                i = self._columns.index(col)
                plain = self._rows[row_id]
                text = cell.plain + str(cell.style)
                if plain[i] != text:
                    self.update_cell(row_id, col.key, cell)
                    self._rows[row_id] = (*plain[:i], text, *plain[i + 1 :])


def _haystack(entity: Entity) -> str:
    return printable(repr(entity)).lower()
