"""A scenario run's history of operations, and the lanes drawn from it.

Every actor of a run narrates what it does as operations appended to one
Redis stream (``coordscope:history:<run>``, one JSON ``op`` field per entry),
in the style of Jepsen histories: an actor *invokes* an operation and it
completes ``ok``, ``fail`` (it certainly did not happen) or ``info`` (unknown,
or a plain event such as a pause or a crash). Several processes write to it:
the run itself and the services it started (each a *source*, ``src``, with
its own sequence numbers ``n``). The stream's order is the history's order,
and an op's ``index`` is its position in it; a writer that retries a write
whose reply it lost may append an op twice, and readers keep the first copy
(by ``src`` and ``n``). Every reader — the collectors for every viewer, the
run for its verdict — goes through :class:`HistoryReader`, so all of them see
the same ops with the same indices.

:func:`lanes` turns a history into one lane per actor on a shared time axis:

- an ``invoke``/completion pair of the same ``f`` is a span of that kind
  (``wait`` for ``acquire``: the time spent queueing or polling);
- ``acquire`` ok opens a ``hold`` (closed when the release completes or
  the actor crashes) and a ``lease`` (the TTL the store granted);
- ``pause``/``resume`` info ops bound a ``pause`` (a GC pause, a SIGSTOP);
- the nemesis actor's ``fault``/``heal`` ops bound a ``fault`` window;
- ``session`` info ops (ZooKeeper clients) bound ``suspended`` and ``lost``
  spans, closed when the client is CONNECTED again;
- writes, rejections, crashes, violations and RedLock attempts (``granted``
  with a valid majority, ``refused`` otherwise) are ticks, and so is any op
  that carries a ``tick`` in its data (a charge, a replay, a 409).

A tick carries the message it is a step of (its op's data ``msg``), so a
click on it on the screens finds the rest of the message's path
(:mod:`collectors.journeys`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NEMESIS = "nemesis"
CHECKER = "checker"
RUNNER = "runner"
RUN_SOURCE = "run"
"""The ``src`` of the ops the run's own process writes."""


SPANS = {
    "hold": "hold (fence)",
    "lease": "lease (TTL)",
    "wait": "waiting",
    "pause": "paused",
    "fault": "fault",
    "suspended": "session suspended",
    "lost": "session lost",
    "pay": "request in flight",
    "handle": "handling a request",
    "apply": "applying an event",
    "request": "request (coloured by the instance that served it)",
    "transfer": "a transfer in flight",
    "branch": "a branch open (in doubt while prepared)",
}
"""What each kind of span on a lane means (the screens' legends, in this order)."""
TICKS = {
    "write": "write accepted",
    "rejected": "write rejected",
    "violation": "violation",
    "crash": "crash",
    "granted": "RedLock majority",
    "refused": "RedLock refused",
    "charge": "charge",
    "replay": "answer replayed",
    "replayed": "got a replay",
    "conflict": "409 in flight",
    "mismatch": "422 other payload",
    "timeout": "no reply",
    "error": "error",
    "emit": "event sent",
    "duplicate": "redelivery skipped",
    "requeue": "requeued (not next)",
    "claim": "claimed (XAUTOCLAIM)",
    "login": "logged in",
    "logout": "logged out (by the user)",
    "kicked": "logged out by the app",
    "expired": "session expired (TTL end)",
    "leak": "saw another's session",
    "prepared": "branch prepared (votes yes)",
    "vote-no": "branch votes no",
    "decision": "COMMIT (2PC, logged) or Confirm (TCC) decided",
    "abort": "ABORT (2PC) or Cancel (TCC) decided",
    "commit": "branch committed / confirmed",
    "rollback": "branch rolled back / cancelled",
    "recover": "recovered from the log",
    "blocked": "waits on a branch in doubt",
    "tried": "Try applied (funds reserved)",
    "suspended": "empty rollback (SUSPENDED)",
    "fenced": "refused by the fence (late or repeated)",
    "twice": "applied again",
    "committed": "local transaction committed (its message with it)",
    "rolled-back": "rolled back (a local transaction, or its half message)",
    "half": "half message stored (not visible yet)",
    "published": "message published (XADD) / delivered by the broker",
    "marked": "outbox row marked sent",
    "check": "broker checks back with the producer",
    "discarded": "half message discarded (checks exhausted)",
    "applied": "message applied by the consumer",
    "notify": "notification attempt",
    "acked": "notification acknowledged",
    "gave-up": "notifier gave up",
    "reconciled": "applied by reconciliation (query)",
}
"""What each kind of tick on a lane means."""


VERDICT_LINE = ("line", "verdict", "where the verdict found it broken")
"""A line across every lane at the counterexample's moment (:attr:`Verdict.at_ms`)."""


def legend(lanes: Iterable[Lane], verdict: Verdict | None = None) -> list[tuple[str, str, str]]:
    """(``span`` | ``tick`` | ``line``, kind, meaning) of what these lanes show, in legend order."""
    spans = {s.kind for lane in lanes for s in lane.spans}
    ticks = {t.kind for lane in lanes for t in lane.ticks}
    line = [VERDICT_LINE] if verdict is not None and not verdict.holds and verdict.at_ms is not None else []
    return (
        [("span", k, v) for k, v in SPANS.items() if k in spans]
        + [("tone", t, f"served by {t}") for t in tones(lanes)]
        + [("tick", k, v) for k, v in TICKS.items() if k in ticks]
        + line
    )


def tones(lanes: Iterable[Lane]) -> list[str]:
    """The instances that served the lanes' requests, sorted: a span's colour is its
    instance's place in this list (the same on every screen)."""
    return sorted({s.tone for lane in lanes for s in lane.spans if s.tone})


@dataclass(frozen=True)
class Span:
    """A bar on an actor's lane: a hold, a wait, a pause, a lease (TTL), a fault window."""

    kind: str
    start_ms: int
    end_ms: int | None
    """None while it is still open."""
    label: str = ""
    outcome: str = ""
    tone: str = ""
    """Who served it (an app instance): the screens colour the span by it."""


@dataclass(frozen=True)
class Tick:
    """A point on an actor's lane: a write accepted or rejected, a violation, a crash."""

    kind: str
    at_ms: int
    label: str = ""
    msg: str = ""
    """The message it is a step of (its journey), if any."""


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
class Op:
    index: int
    """Position in the history as stored (the writer's own count before that)."""
    t_ms: int
    """Milliseconds since the run started (the machine's monotonic clock, shared by
    the run and the services it started)."""
    actor: str
    kind: str
    """invoke | ok | fail | info."""
    f: str
    key: str = ""
    value: str = ""
    fence: int | None = None
    ttl_ms: int | None = None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    """Structured detail a checker may read (never the wording of ``note``)."""
    src: str = RUN_SOURCE
    n: int = 0
    """The writer's own sequence number (``src`` and ``n`` identify an op)."""

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if v not in ("", None, {}) and k != "index"}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def same(self, other: Op) -> bool:
        """The same operation, wherever it sits in a history."""
        return replace(self, index=0) == replace(other, index=0)


def parse_op(raw: bytes | str, index: int = 0) -> Op | None:
    """One history entry, or None when it is not a well-formed op (never raises)."""
    try:
        data: Any = json.loads(raw)
        detail = data.get("data", {})
        return Op(
            index=index,
            t_ms=int(data["t_ms"]),
            actor=str(data["actor"]),
            kind=str(data["kind"]),
            f=str(data["f"]),
            key=str(data.get("key", "")),
            value=str(data.get("value", "")),
            fence=int(data["fence"]) if data.get("fence") is not None else None,
            ttl_ms=int(data["ttl_ms"]) if data.get("ttl_ms") is not None else None,
            note=str(data.get("note", "")),
            data=detail if isinstance(detail, dict) else {},
            src=str(data.get("src", RUN_SOURCE)),
            n=int(data.get("n", data.get("index", 0))),
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


class HistoryReader:
    """Stream entries in (in stream order, possibly in several reads), ops out.

    Each op gets its position as its index; a second copy of an op (the same
    ``src`` and ``n``: a writer retried a write whose reply it lost) is dropped.
    """

    def __init__(self) -> None:
        self.count = 0
        self.bad = 0
        """Entries that were not well-formed ops (counted, never fatal)."""
        self._seen: set[tuple[str, int]] = set()

    def feed(self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> list[Op]:
        out = []
        for _entry_id, fields in entries:
            op = parse_op(fields.get(b"op", b""), self.count)
            if op is None:
                self.bad += 1
                continue
            if (op.src, op.n) in self._seen:
                continue
            self._seen.add((op.src, op.n))
            self.count += 1
            out.append(op)
        return out


class _LaneBuilder:
    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.spans: list[Span] = []
        self.ticks: list[Tick] = []
        self.open: dict[tuple[str, str], tuple[int, str]] = {}
        """(kind, span id) -> (start, label): what the actor is doing now. An actor that does
        several things of a kind at once (an instance serving two requests) tells them apart
        by a ``span`` id in the ops' data."""
        self.lease: tuple[int, int, str] | None = None
        """(start, the TTL's end, label) of the grant the store holds for this actor."""

    def start(self, kind: str, at: int, label: str = "", sid: str = "") -> None:
        self.close(kind, at, "superseded", sid)
        self.open[(kind, sid)] = (at, label)

    def close(self, kind: str, at: int, outcome: str, sid: str = "", tone: str = "") -> None:
        if (kind, sid) in self.open:
            start, label = self.open.pop((kind, sid))
            self.spans.append(
                Span(kind=kind, start_ms=start, end_ms=at, label=label, outcome=outcome, tone=tone)
            )

    def close_all(self, at: int, outcome: str) -> None:
        for kind, sid in list(self.open):
            self.close(kind, at, outcome, sid)

    def grant(self, at: int, ttl_ms: int, label: str) -> None:
        self.end_lease(at)
        self.lease = (at, at + ttl_ms, label)

    def end_lease(self, at: int) -> None:
        """The lease ends at its TTL, or earlier when the actor released the key."""
        if self.lease is not None:
            start, ends, label = self.lease
            self.spans.append(Span(kind="lease", start_ms=start, end_ms=min(ends, at), label=label))
            self.lease = None

    def build(self) -> Lane:
        if self.lease is not None:
            start, ends, label = self.lease
            self.spans.append(Span(kind="lease", start_ms=start, end_ms=ends, label=label))
            self.lease = None
        spans = self.spans + [
            Span(kind=k, start_ms=s, end_ms=None, label=label) for (k, _), (s, label) in self.open.items()
        ]
        spans.sort(key=lambda s: (s.start_ms, s.kind))
        return Lane(actor=self.actor, spans=tuple(spans), ticks=tuple(self.ticks))


def lanes(ops: Iterable[Op]) -> tuple[Lane, ...]:
    builders: dict[str, _LaneBuilder] = {}

    def lane(actor: str) -> _LaneBuilder:
        if actor not in builders:
            builders[actor] = _LaneBuilder(actor)
        return builders[actor]

    for op in ops:
        if op.actor == CHECKER:
            if op.f == "violation":
                for actor in _actors_of(op):
                    lane(actor).ticks.append(Tick(kind="violation", at_ms=op.t_ms, label=op.note))
            continue
        b = lane(op.actor)
        if op.actor == NEMESIS:
            if op.f == "fault":
                b.start("fault", op.t_ms, op.value)
            elif op.f == "heal":
                b.close("fault", op.t_ms, "healed")
            continue
        tick = op.data.get("tick")
        if isinstance(tick, str):
            b.ticks.append(Tick(kind=tick, at_ms=op.t_ms, label=op.note, msg=msg_of(op)))
        sid = str(op.data.get("span", ""))
        if op.kind == "invoke":
            b.start("wait" if op.f == "acquire" else op.f, op.t_ms, op.key, sid)
            continue
        if op.kind == "info" and op.f == "pause":
            b.start("pause", op.t_ms, op.note)
        elif op.kind == "info" and op.f == "resume":
            b.close("pause", op.t_ms, "resumed")
        elif op.kind == "info" and op.f == "crash":
            b.close_all(op.t_ms, "crashed")
            b.ticks.append(Tick(kind="crash", at_ms=op.t_ms, label=op.note))
        elif op.kind == "info" and op.f == "session":
            _session(b, op)
        elif op.kind == "info" and op.f == "attempt":
            held = _held(op.value)
            b.ticks.append(Tick(kind="granted" if held else "refused", at_ms=op.t_ms, label=op.note))
        elif op.f == "acquire":
            b.close("wait", op.t_ms, op.kind)
            if op.kind == "ok":
                label = f"fence {op.fence}" if op.fence is not None else ""
                b.start("hold", op.t_ms, label)
                if op.ttl_ms:
                    b.grant(op.t_ms, op.ttl_ms, label)
        elif op.f == "release":
            if op.kind == "ok":
                b.end_lease(op.t_ms)
            b.close("release", op.t_ms, op.kind)
            b.close("hold", op.t_ms, "released" if op.kind == "ok" else "lost")
        else:
            b.close(op.f, op.t_ms, op.kind, sid, str(op.data.get("served_by", "")))
            if op.f == "write":
                kind = {"ok": "write", "fail": "rejected"}.get(op.kind, "write?")
                b.ticks.append(Tick(kind=kind, at_ms=op.t_ms, label=op.note))
    return tuple(b.build() for b in builders.values())


def msg_of(op: Op) -> str:
    """The message an op is a step of (its data's ``msg``), or ``""``."""
    msg = op.data.get("msg")
    return str(msg) if isinstance(msg, (str, int)) and msg != "" else ""


def _session(b: _LaneBuilder, op: Op) -> None:
    """A ZooKeeper client's session state: SUSPENDED and LOST are spans on its lane."""
    state = op.value.upper()
    if state == "SUSPENDED":
        b.start("suspended", op.t_ms, "connection lost")
    elif state == "LOST":
        b.close("suspended", op.t_ms, "lost")
        b.start("lost", op.t_ms, "session expired")
        b.ticks.append(Tick(kind="lost", at_ms=op.t_ms, label="session expired"))
    elif state == "CONNECTED":
        b.close("suspended", op.t_ms, "reconnected")
        b.close("lost", op.t_ms, "new session")


def _actors_of(op: Op) -> list[str]:
    try:
        actors = json.loads(op.value)
    except ValueError:
        return []
    return [str(a) for a in actors] if isinstance(actors, list) else []


def _held(value: str) -> bool:
    """Did a RedLock attempt (its JSON summary, from the store: untrusted) end held?"""
    try:
        attempt = json.loads(value)
    except ValueError:
        return False
    return isinstance(attempt, dict) and attempt.get("held") is True
