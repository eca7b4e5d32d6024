"""The one event model shared by every viewer (TUI, web page, recordings).

Collectors turn what they read from Redis and ZooKeeper into *entities* —
locks, sessions, idempotency marks, transactions, nodes, raw keys, scenario
runs — and tell viewers about them with three kinds of past-tense events:

- ``<kind>.upserted`` carries the entity's whole current state;
- ``<kind>.removed`` carries its id;
- ``log`` is one line of the live event log.

A viewer that connects first receives a ``snapshot`` (every entity), then the
events. Everything here is a frozen dataclass that serialises to JSON with
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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

SCHEMA_VERSION = 1

Store = Literal["redis", "zookeeper"]


# --------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class Waiter:
    """A client waiting for a lock: a poller seen in the store, or a queued znode."""

    id: str
    since_ms: int | None = None
    polls: int | None = None
    seq: int | None = None
    watches: str | None = None
    """The contender this one watches (its predecessor), for ZooKeeper locks."""
    session: str | None = None


@dataclass(frozen=True)
class ReplicaCopy:
    """Whether a replica already holds the master's copy of a key."""

    node: str
    present: bool
    same_value: bool


@dataclass(frozen=True)
class Grant:
    """One master's grant of a lock (one cell of a RedLock row)."""

    node: str
    token: str | None
    holder: str | None
    ttl_ms: int | None
    replicas: tuple[ReplicaCopy, ...] = ()
    stale: bool = False


@dataclass(frozen=True)
class Lock:
    KIND: ClassVar[str] = "lock"
    id: str
    store: Store
    name: str
    layout: str
    """Which library's layout was recognised: coordscope, redis-py, kazoo, curator, ..."""
    holder: str | None
    token: str | None = None
    fence: int | None = None
    ttl_ms: int | None = None
    holders: tuple[str, ...] = ()
    """Everyone who holds. Redis: every distinct holder the grants name, most granted
    first. ZooKeeper: every reader sharing a read lock."""
    split: bool = False
    """Redis grants that name different holders, none of them on a majority of the
    grants: the promoted replica and the dead master after a failover, RedLock
    contenders that each took some masters. ``holder`` is then only the first."""
    expires_at_ms: int | None = None
    """Wall-clock deadline computed from PTTL when the key was read."""
    waiters: tuple[Waiter, ...] = ()
    grants: tuple[Grant, ...] = ()
    nodes: tuple[str, ...] = ()
    key: str = ""
    as_of_ms: int = 0
    stale: bool = False
    """True when a node that holds part of this lock is down: the data is as of ``as_of_ms``."""
    detail: str = ""


@dataclass(frozen=True)
class Session:
    KIND: ClassVar[str] = "session"
    id: str
    store: Store
    layout: str
    key: str
    session_id: str
    user: str | None = None
    ttl_ms: int | None = None
    expires_at_ms: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    created_ms: int | None = None
    last_access_ms: int | None = None
    max_inactive_s: int | None = None
    state: str = "live"
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


@dataclass(frozen=True)
class Mark:
    KIND: ClassVar[str] = "mark"
    id: str
    store: Store
    layout: str
    key: str
    state: str
    owner: str | None = None
    ttl_ms: int | None = None
    expires_at_ms: int | None = None
    detail: dict[str, str] = field(default_factory=dict)
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


@dataclass(frozen=True)
class Branch:
    id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class Transaction:
    KIND: ClassVar[str] = "transaction"
    id: str
    protocol: str
    state: str
    branches: tuple[Branch, ...] = ()
    layout: str = "coordscope"
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


@dataclass(frozen=True)
class Node:
    KIND: ClassVar[str] = "node"
    id: str
    store: Store
    address: str
    role: str = "unknown"
    status: str = "connecting"
    """connecting | up | down, or for ZooKeeper: up | suspended | lost | down."""
    master: str | None = None
    feed: str = ""
    """How changes reach us: keyspace notifications, scanning (and why), watches."""
    as_of_ms: int | None = None
    """Time of the last good data read from this node."""
    detail: str = ""
    keys: int = 0
    events: int = 0
    coalesced: int = 0
    gaps: int = 0


@dataclass(frozen=True)
class RawKey:
    """A key or znode no recogniser claimed: listed as it is."""

    KIND: ClassVar[str] = "key"
    id: str
    store: Store
    node: str
    key: str
    type: str
    ttl_ms: int | None = None
    size: int = 0
    preview: str = ""
    as_of_ms: int = 0
    stale: bool = False


@dataclass(frozen=True)
class Span:
    """A bar on an actor's lane: a hold, a wait, a pause, a lease (TTL), a fault window."""

    kind: str
    start_ms: int
    end_ms: int | None
    """None while it is still open."""
    label: str = ""
    outcome: str = ""


@dataclass(frozen=True)
class Tick:
    """A point on an actor's lane: a write accepted or rejected, a violation, a crash."""

    kind: str
    at_ms: int
    label: str = ""


@dataclass(frozen=True)
class Lane:
    actor: str
    spans: tuple[Span, ...] = ()
    ticks: tuple[Tick, ...] = ()


@dataclass(frozen=True)
class Verdict:
    holds: bool
    invariant: str
    summary: str
    actors: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    at_ms: int | None = None
    """When the counterexample happened, in ms since the run started."""
    ops: tuple[int, ...] = ()
    """Indices of the history operations that make up the counterexample."""
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    KIND: ClassVar[str] = "run"
    id: str
    scenario: str
    status: str
    """running | held | violated | error | stopped."""
    params: dict[str, str] = field(default_factory=dict)
    faults: tuple[str, ...] = ()
    started_ms: int | None = None
    ended_ms: int | None = None
    verdict: Verdict | None = None
    actors: tuple[str, ...] = ()
    lanes: tuple[Lane, ...] = ()
    ops: int = 0
    last_op: str = ""
    error: str = ""
    table: tuple[tuple[str, ...], ...] = ()
    """A scenario's own table (RedLock attempts, a comparison): a header row, then rows."""
    as_of_ms: int = 0


Entity = Lock | Session | Mark | Transaction | Node | RawKey | Run
ENTITY_TYPES: tuple[type[Any], ...] = (Lock, Session, Mark, Transaction, Node, RawKey, Run)
KINDS: dict[str, type[Any]] = {t.KIND: t for t in ENTITY_TYPES}
PLURAL: dict[str, str] = {
    "lock": "locks",
    "session": "sessions",
    "mark": "marks",
    "transaction": "transactions",
    "node": "nodes",
    "key": "keys",
    "run": "runs",
}


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
    return dataclasses.asdict(entity)


def to_json(item: Event | Snapshot) -> dict[str, Any]:
    """The wire form of an event or snapshot: a JSON object with ``type`` and ``v``."""
    if isinstance(item, Upserted):
        return {
            "type": item.type,
            "v": SCHEMA_VERSION,
            "seq": item.seq,
            item.entity.KIND: entity_json(item.entity),
        }
    if isinstance(item, Removed):
        return {"type": item.type, "v": SCHEMA_VERSION, "seq": item.seq, "id": item.id}
    if isinstance(item, Logged):
        body = dataclasses.asdict(item)
        return {"type": "log", "v": SCHEMA_VERSION, **body}
    return {
        "type": "snapshot",
        "v": SCHEMA_VERSION,
        **state_json(item),
    }


def state_json(snapshot: Snapshot) -> dict[str, Any]:
    """The body of ``GET /api/state``: one list per kind, plus the recent log."""
    body: dict[str, Any] = {"seq": snapshot.seq, "at_ms": snapshot.at_ms}
    for kind, plural in PLURAL.items():
        body[plural] = [entity_json(e) for e in snapshot.of(kind)]
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
        entities = {
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
