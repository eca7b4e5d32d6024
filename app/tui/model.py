"""The TUI's copy of the state: entities by kind and the recent log, fed by the bus."""

from __future__ import annotations

from collections import deque

from collectors.events import Entity, Event, Logged, Removed, Snapshot, Upserted
from collectors.families import KINDS


class Model:
    def __init__(self, log_size: int = 500) -> None:
        self.entities: dict[str, dict[str, Entity]] = {k: {} for k in KINDS}
        self.log: deque[Logged] = deque(maxlen=log_size)
        self.at_ms = 0

    def apply(self, delivery: Snapshot | list[Event]) -> tuple[set[str], list[Logged]]:
        """Apply a snapshot or a batch; returns (kinds that changed, new log lines)."""
        if isinstance(delivery, Snapshot):
            self.at_ms = delivery.at_ms
            for kind in KINDS:
                self.entities[kind] = {e.id: e for e in delivery.of(kind)}
            self.log.clear()
            self.log.extend(delivery.log)
            return set(KINDS), list(delivery.log)
        changed: set[str] = set()
        lines: list[Logged] = []
        for event in delivery:
            if isinstance(event, Upserted):
                self.entities[event.entity.KIND][event.entity.id] = event.entity
                changed.add(event.entity.KIND)
            elif isinstance(event, Removed):
                self.entities[event.kind].pop(event.id, None)
                changed.add(event.kind)
            else:
                self.log.append(event)
                lines.append(event)
        return changed, lines
