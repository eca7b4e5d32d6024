"""The one event model shared by every viewer (TUI, web page, recordings).

Collectors turn what they read from Redis and ZooKeeper into *entities* of
the families listed in :mod:`collectors.families` — locks, sessions,
idempotency marks, transactions, services, nodes, raw keys, scenario runs —
and tell viewers about them with three kinds of past-tense events:

- ``<kind>.upserted`` carries the entity's whole current state;
- ``<kind>.removed`` carries its id;
- ``log`` is one line of the live event log.

A viewer that connects first receives a ``snapshot`` (every entity), then the
events. On the wire an ``upserted`` event also carries the entity's ``row``
(its family's cells) and a snapshot its ``rows``, so the page draws every
family's table without knowing any family. Everything here is a frozen dataclass that serialises to JSON with
:func:`to_json` and back with :func:`from_json`; the JSON carries ``"v"`` (the
schema version) so a recording made today can be replayed by a later
version that knows how to read it.

Names and values that come from the stores are untrusted text: they travel
verbatim here (JSON escapes control characters itself) and each viewer is
responsible for rendering them as text only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union

from collectors.families import FAMILIES, KINDS, PLURAL
from collectors.families.base import Entity

__all__ = [
    "SCHEMA_VERSION",
    "Entity",
    "Event",
    "Logged",
    "Page",
    "Removed",
    "SchemaError",
    "Snapshot",
    "Upserted",
]

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Upserted:
    entity: Entity
    seq: int = 0

    @property
    def type(self) -> str:
        return f"{self.entity.KIND}.upserted"


@dataclass(frozen=True)
class Removed:
    kind: str
    id: str
    seq: int = 0

    @property
    def type(self) -> str:
        return f"{self.kind}.removed"


@dataclass(frozen=True)
class Logged:
    at_ms: int
    level: str
    """info | warn | error"""
    source: str
    text: str
    seq: int = 0
    type: ClassVar[str] = "log"


Event = Upserted | Removed | Logged


@dataclass(frozen=True)
class Snapshot:
    """Every entity, as of event number ``seq``."""

    seq: int
    at_ms: int
    entities: dict[str, tuple[Entity, ...]]
    log: tuple[Logged, ...] = ()
    type: ClassVar[str] = "snapshot"

    def of(self, kind: str) -> tuple[Entity, ...]:
        return self.entities.get(kind, ())


# --------------------------------------------------------------------------- JSON


def entity_json(entity: Entity) -> dict[str, Any]:
    body: dict[str, Any] = dataclasses.asdict(entity)  # type: ignore[call-overload]
    return body


def row_json(entity: Entity) -> list[dict[str, Any]]:
    """The entity's row as both screens show it (its family's columns)."""
    return [cell.to_json() for cell in FAMILIES[entity.KIND].row(entity)]


def to_json(item: Event | Snapshot, page: Page | None = None) -> dict[str, Any]:
    """The wire form of an event or snapshot: a JSON object with ``type`` and ``v``.

    A snapshot may be cut to one ``page`` of each kind (every list sorted by id); its
    ``totals`` then say how many there are in all."""
    if isinstance(item, Upserted):
        return {
            "type": item.type,
            "v": SCHEMA_VERSION,
            "seq": item.seq,
            item.entity.KIND: entity_json(item.entity),
            "row": row_json(item.entity),
        }
    if isinstance(item, Removed):
        return {"type": item.type, "v": SCHEMA_VERSION, "seq": item.seq, "id": item.id}
    if isinstance(item, Logged):
        body = dataclasses.asdict(item)
        return {"type": "log", "v": SCHEMA_VERSION, **body}
    page = page or Page()
    return {
        "type": "snapshot",
        "v": SCHEMA_VERSION,
        **state_json(item, page),
        "rows": {
            kind: {e.id: row_json(e) for e in page.cut(item.of(kind))}
            for kind in PLURAL
            if FAMILIES[kind].columns and page.wants(kind)
        },
    }


@dataclass(frozen=True)
class Page:
    """Which part of a snapshot to send: ``limit`` entities of each kind (or of ``kind``
    only) from ``offset`` on (``limit=None``: all of them)."""

    limit: int | None = None
    offset: int = 0
    kind: str | None = None

    def wants(self, kind: str) -> bool:
        return self.kind is None or self.kind == kind

    def cut(self, entities: tuple[Entity, ...]) -> tuple[Entity, ...]:
        if self.limit is None:
            return entities[self.offset :]
        return entities[self.offset : self.offset + self.limit]


def state_json(snapshot: Snapshot, page: Page | None = None) -> dict[str, Any]:
    """The body of ``GET /api/state``: one list per kind (sorted by id, cut to ``page``),
    how many of each there are in all, and the recent log."""
    page = page or Page()
    body: dict[str, Any] = {"seq": snapshot.seq, "at_ms": snapshot.at_ms}
    for kind, plural in PLURAL.items():
        if page.wants(kind):
            body[plural] = [entity_json(e) for e in page.cut(snapshot.of(kind))]
    body["totals"] = {plural: len(snapshot.of(kind)) for kind, plural in PLURAL.items()}
    body["log"] = [dataclasses.asdict(line) for line in snapshot.log]
    return body


class SchemaError(ValueError):
    """Raised by :func:`from_json` for JSON that is not an event of a known version."""


def from_json(data: dict[str, Any]) -> Event | Snapshot:
    """Parse the wire form back into typed events (used by ``coordscope replay``)."""
    if not isinstance(data, dict):
        raise SchemaError("an event must be a JSON object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"unsupported event schema version {version!r}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise SchemaError("event without a 'type'")
    if kind == "snapshot":
        entities: dict[str, tuple[Entity, ...]] = {
            k: tuple(_decode(KINDS[k], e) for e in data.get(plural, [])) for k, plural in PLURAL.items()
        }
        log = tuple(_decode(Logged, line) for line in data.get("log", []))
        return Snapshot(
            seq=int(data.get("seq", 0)), at_ms=int(data.get("at_ms", 0)), entities=entities, log=log
        )
    if kind == "log":
        return _decode(Logged, data)
    entity_kind, _, verb = kind.partition(".")
    if entity_kind not in KINDS or verb not in ("upserted", "removed"):
        raise SchemaError(f"unknown event type {kind!r}")
    seq = int(data.get("seq", 0))
    if verb == "removed":
        return Removed(kind=entity_kind, id=str(data["id"]), seq=seq)
    return Upserted(entity=_decode(KINDS[entity_kind], data[entity_kind]), seq=seq)


_T = TypeVar("_T")


def _decode(cls: type[_T], data: Any) -> _T:
    """Build dataclass ``cls`` from plain JSON, following its type hints."""
    if not isinstance(data, dict):
        raise SchemaError(f"{cls.__name__}: expected an object")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _decode_value(hints[f.name], data[f.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchemaError(f"{cls.__name__}: {exc}") from None


def _decode_value(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode_value(options[0], value)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        return tuple(_decode_value(item, v) for v in value)
    if origin is dict:
        return dict(value)
    if origin is Literal:
        return value
    if dataclasses.is_dataclass(hint):
        return _decode(hint, value)  # type: ignore[arg-type]
    return value
