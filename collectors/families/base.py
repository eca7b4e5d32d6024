"""What every family of entities is made of, and what it may see of the state.

A *family* (locks, sessions, marks, transactions, services, runs, raw keys,
nodes) is one unit: its entity (a frozen dataclass), the recognisers that
turn a Redis key into one of its facts, how the facts of several keys and
nodes join into one entity, how a change is narrated in the event log, and
the columns (and the detail view) both screens show. Families are listed
once, in :mod:`collectors.families`; the state, the snapshot, the TUI and
the web page all take the list from there.

Cells are described here, not in the screens: a :class:`Cell` is a few
:class:`Piece` s of text, each with a *tone* (``good``, ``bad``, ``warn``,
``dim``, ``bold``, ``accent``) that each screen maps to its own colours.
A cell may also count down to a wall-clock time (a TTL, a lease): the
screens redraw those as time passes, without a new event. Text in cells is
untrusted (key names, values): the screens render it as text only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from collectors.layouts import LayoutConfig
from collectors.layouts.facts import Fact, GroupFact
from collectors.records import KeyRecord, ZNodeRecord

if TYPE_CHECKING:
    from collectors.families.nodes import Node

EntityRef = tuple[str, str]
"""(kind, entity id)"""
Member = tuple[str, str]
"""(node id, key or znode path) — one observation that feeds an entity."""


class Entity(Protocol):
    """Any family's entity: a frozen dataclass with a kind and an id."""

    KIND: ClassVar[str]

    @property
    def id(self) -> str: ...


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Piece:
    text: str
    tone: str = ""
    """"" | good | bad | warn | dim | bold | accent"""


@dataclass(frozen=True)
class Cell:
    pieces: tuple[Piece, ...] = ()
    """Shown one after the other; the page wraps between pieces, never inside one."""
    title: str = ""
    """The whole value (a tooltip on the page)."""
    until_ms: int | None = None
    """A countdown: the screens show the time left until this wall-clock ms (the pieces
    are what to show when it is unknown)."""
    since_ms: int | None = None
    """A count-up: the screens show the time since this wall-clock ms (an age)."""

    @property
    def plain(self) -> str:
        return " ".join(p.text for p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"p": [[p.text, p.tone] if p.tone else [p.text] for p in self.pieces]}
        if self.title:
            body["t"] = self.title
        if self.until_ms is not None:
            body["u"] = self.until_ms
        if self.since_ms is not None:
            body["s"] = self.since_ms
        return body


def text(value: object, tone: str = "", title: str = "") -> Cell:
    """One piece of text (``None`` shows as ``–``)."""
    shown = "–" if value is None or value == "" else str(value)
    return Cell(pieces=(Piece(shown, "dim" if shown == "–" and not tone else tone),), title=title)


def middle(value: str, width: int) -> str:
    """``value`` cut in the middle to ``width`` characters: names that share a long prefix
    (``coordscope:ordering:{run}:q:worker-1``) still differ on screen."""
    if len(value) <= width:
        return value
    head = (width - 1) // 3
    return f"{value[:head]}…{value[len(value) - (width - 1 - head) :]}"


def pieces(*parts: tuple[str, str] | str, title: str = "") -> Cell:
    """Several pieces, each ``"text"`` or ``("text", tone)``."""
    out = tuple(Piece(p) if isinstance(p, str) else Piece(p[0], p[1]) for p in parts)
    out = tuple(p for p in out if p.text)
    return Cell(pieces=out or (Piece("–", "dim"),), title=title)


def countdown(expires_at_ms: int | None, ttl_ms: int | None = None) -> Cell:
    """Time left until ``expires_at_ms``; without one, the TTL as read (or ``–``)."""
    if expires_at_ms is None:
        return text(fmt_ms(ttl_ms) if ttl_ms is not None else None)
    return Cell(pieces=(Piece("–", "dim"),), until_ms=expires_at_ms)


def age(since_ms: int | None) -> Cell:
    """Time since ``since_ms``, counting up on the screens (``–`` when unknown)."""
    if since_ms is None:
        return text(None)
    return Cell(pieces=(Piece("–", "dim"),), since_ms=since_ms)


def fmt_ms(ms: int | None) -> str:
    """A duration the way every screen shows it: 0.4s, 12s, 3.1h."""
    if ms is None:
        return "–"
    if ms < 0:
        return "expired"
    if ms < 10_000:
        return f"{ms / 1000:.1f}s"
    if ms < 3_600_000:
        return f"{ms // 1000}s"
    return f"{ms / 3_600_000:.1f}h"


STATUS_TONE = {
    "up": "good",
    "down": "bad",
    "lost": "bad",
    "suspended": "warn",
    "abandoned": "warn",
    "connecting": "warn",
    "running": "warn",
    "held": "good",
    "violated": "bad",
    "error": "bad",
    "stopped": "warn",
    "live": "good",
    "expired": "warn",
    "deleted": "warn",
    "silent": "bad",
    "killed": "bad",
    "paused": "warn",
    "starting": "warn",
    "COMPLETED": "good",
    "IN_PROGRESS": "warn",
    "STALE": "bad",
    "FAILED": "bad",
    "EXPIRED": "dim",
    "PREPARED (in doubt)": "bad",
    "IN DOUBT": "bad",
    "IDLE IN TRANSACTION": "warn",
    "INIT": "dim",
    "PREPARING": "warn",
    "COMMITTING": "warn",
    "ABORTING": "warn",
    "DONE": "good",
    "TRYING": "warn",
    "CONFIRMING": "warn",
    "CANCELLING": "warn",
    "CONFIRMED": "good",
    "CANCELLED": "dim",
    "HALF": "warn",
    "COMMITTED": "good",
    "ROLLED_BACK": "dim",
    "DISCARDED": "bad",
    "NOTIFYING": "warn",
    "ACKED": "good",
    "GAVE_UP": "bad",
    "RECONCILED": "good",
}


def status(value: str) -> Cell:
    """A state in its tone; ``IN DOUBT (COMMITTING)`` takes the tone of ``IN DOUBT``."""
    tone = STATUS_TONE.get(value) or STATUS_TONE.get(value.partition(" (")[0], "bold")
    return text(value, tone)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    cell: Callable[[Any], Cell]
    width: int | None = None
    """The TUI's fixed width: a DataTable column only ever grows, so one wide row
    would push every later column off the screen for good."""
    limit: int = 0
    """The TUI cuts a cell to this many characters (the page wraps instead)."""


Line = tuple[Cell, ...]
"""One line of a detail view."""


# --------------------------------------------------------------------------- the state, as families see it


class StateView(Protocol):
    """What a family may read (and say) while it joins observations into entities."""

    def now(self) -> int: ...
    def group(self, node_id: str) -> str:
        """The master a replica belongs to (a node is its own group)."""
        ...

    def node(self, node_id: str) -> Node | None: ...
    def is_replica(self, node_id: str) -> bool: ...
    def replicas_of(self, master: str) -> list[str]: ...
    def down(self, node_id: str) -> bool: ...
    def stale(self, nodes: Iterable[str]) -> bool: ...
    def observation(self, member: Member) -> tuple[KeyRecord | ZNodeRecord, Fact | None]: ...
    def zk_record(self, node_id: str, path: str) -> ZNodeRecord | None: ...
    def zk_group(self, node_id: str, path: str) -> GroupFact | None: ...
    def log(self, level: str, source: str, text: str) -> None: ...
    def follow(self, ref: EntityRef, member: Member) -> None:
        """``ref`` read ``member`` (a key of another entity): build it again when it changes."""
        ...

    def recheck(self, ref: EntityRef, at_ms: int) -> None:
        """Build ``ref`` again at ``at_ms`` (a lease ends, a heartbeat goes quiet)."""
        ...


KeyRecogniser = Callable[[KeyRecord, LayoutConfig], Fact | None]
GroupRecogniser = Callable[[str, Sequence[ZNodeRecord], LayoutConfig], GroupFact | None]


@dataclass(frozen=True)
class Recogniser:
    """One recogniser a family contributes, and its place in the order they are asked."""

    order: int
    recognise: KeyRecogniser


OWN, MARKS, SESSIONS, LOCKS = 0, 10, 20, 30


def own(recognise: Callable[[KeyRecord], Fact | None]) -> Recogniser:
    """One of coordscope's own layouts (they take no configuration), asked first."""
    return Recogniser(OWN, lambda rec, config: recognise(rec))


"""The order recognisers are asked in: coordscope's own layout first, then idempotency
marks (which look like locks: a small value set NX with a TTL), sessions, then locks."""


class Family:
    """Subclasses describe one family; the state makes one instance of each."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    title: ClassVar[str]
    entity: ClassVar[type[Any]]
    facts: ClassVar[tuple[type[Any], ...]] = ()
    """Fact types (from Redis keys) this family joins into its entities."""
    group_facts: ClassVar[tuple[type[Any], ...]] = ()
    """Fact types about a znode and its children (ZooKeeper) this family joins."""
    recognisers: ClassVar[tuple[Recogniser, ...]] = ()
    group_recognisers: ClassVar[tuple[GroupRecogniser, ...]] = ()
    columns: ClassVar[tuple[Column, ...]] = ()
    panel: ClassVar[str] = "main"
    """Where the dashboards put its table: ``main``, ``side`` or ``none``."""
    sort: ClassVar[str] = ""
    """The column its rows are sorted by."""
    empty: ClassVar[str] = "nothing here yet"

    def __init__(self, view: StateView) -> None:
        self.view = view

    # joining
    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        """Which entity a key with this fact feeds."""
        raise NotImplementedError

    def group_entity_id(self, node_id: str, path: str, fact: Any) -> str:
        """Which entity a znode group with this fact feeds."""
        raise NotImplementedError

    def observed(self, rec: KeyRecord, fact: Any) -> None:
        """Told of every read of a key this family claims, before the entity is rebuilt."""

    def build(self, entity_id: str, members: list[Member]) -> Any:
        """The entity as its observations say now (None: there is none)."""
        raise NotImplementedError

    def forget(self, entity_id: str) -> None:
        """The entity is gone: drop anything kept for it."""

    def bad_entries(self) -> int:
        """Observations this family could not read (counted, never fatal)."""
        return 0

    # telling
    def narrate(self, old: Any, new: Any, cause: str) -> None:
        """Log lines for a change (``cause``: the event that removed a key, if any)."""

    @classmethod
    def row(cls, entity: Any) -> tuple[Cell, ...]:
        return tuple(c.cell(entity) for c in cls.columns)

    @classmethod
    def detail(cls, entity: Any) -> tuple[Line, ...]:
        """The entity in full (enter on a row, a click on the page): by default every field."""
        lines: list[Line] = []
        for f in dataclasses.fields(entity):
            value = getattr(entity, f.name)
            if value in (None, "", (), {}):
                continue
            lines.append((text(f.name, "dim"), text(_plain(value))))
        return tuple(lines)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What a screen needs to lay out this family's table."""
        return {
            "kind": cls.kind,
            "plural": cls.plural,
            "title": cls.title,
            "panel": cls.panel,
            "empty": cls.empty,
            "sort": cls.sort,
            "columns": [{"key": c.key, "label": c.label} for c in cls.columns],
        }


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ", ".join(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(value).items() if v not in (None, ""))
    return str(value)


def prefer_master(view: StateView, members: Iterable[Member], want: type[Any]) -> tuple[str, Any, Any] | None:
    """(node, record, fact) of the first observation of type ``want``, a master's first.

    A replica's copy stands in only while its master is down: with the master up, a copy
    the master no longer has is the replica lagging behind (a key deleted a moment ago)."""
    best = None
    for node_id, key in sorted(members):
        rec, fact = view.observation((node_id, key))
        if isinstance(fact, want):
            if not view.is_replica(node_id):
                return node_id, rec, fact
            if view.down(view.group(node_id)):
                best = best or (node_id, rec, fact)
    return best


def key_chain(families: Iterable[type[Family]]) -> tuple[KeyRecogniser, ...]:
    """Every family's key recognisers, in the order they are asked."""
    found = [r for f in families for r in f.recognisers]
    return tuple(r.recognise for r in sorted(found, key=lambda r: r.order))


def first_fact(chain: Iterable[KeyRecogniser], rec: KeyRecord, config: LayoutConfig) -> Fact | None:
    """What the first recogniser that claims this key says it is."""
    for recognise in chain:
        fact = recognise(rec, config)
        if fact is not None:
            return fact
    return None
