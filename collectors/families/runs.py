"""Runs: a scenario's run, as its narration in the store tells it.

Joining: the run's hash (``coordscope:run:<id>``: scenario, params, faults,
status, actors, verdict, heartbeat) and its history stream
(``coordscope:history:<id>``, read with :class:`collectors.runs.HistoryReader`)
are one run, with a lane per actor. A run still ``running`` whose heartbeat
has been quiet for :data:`ABANDONED_MS` is shown ``abandoned`` (its process
died); the family rebuilds it when that moment comes.

A running run is rebuilt at most every :data:`REDRAW_MS`: its history may grow by
hundreds of ops a second, and each rebuild draws every lane again and sends the whole
run to every viewer. A change of status is never held back.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from collectors.families.base import Column, Family, Member, own, prefer_master, status, text
from collectors.journeys import Journey, JourneyBook
from collectors.layouts import coordscope
from collectors.layouts.facts import RunFact, RunHistoryFact
from collectors.records import KeyRecord
from collectors.runs import HistoryReader, Lane, Op, Verdict, lanes, legend

MAX_RUN_OPS = 5000
MAX_ORPHANS = 50
"""History streams read without their run's hash (it expired first, or a run died before
writing it): kept this many, the oldest forgotten first."""
ABANDONED_MS = 5000
"""A running run with no sign of life for this long is shown abandoned."""
REDRAW_MS = 200
"""A running run's lanes are drawn again at most this often (5 times a second)."""


@dataclass(frozen=True)
class Run:
    KIND: ClassVar[str] = "run"
    id: str
    scenario: str
    status: str
    """running | held | violated | error | stopped | abandoned."""
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
    """A scenario's own table (RedLock attempts, charges per order): a header row, then rows."""
    legend: tuple[tuple[str, str, str], ...] = ()
    """(span | tick, kind, meaning) of what its lanes show, for the screens' legends."""
    journeys: tuple[Journey, ...] = ()
    """Each message's path across the lanes (messaging runs): click one, see it all."""
    messages: int = 0
    """How many messages the run followed (more than :attr:`journeys` keeps, in a big run)."""
    as_of_ms: int = 0


class Runs(Family):
    kind = "run"
    plural = "runs"
    title = "Runs"
    entity = Run
    facts = (RunFact, RunHistoryFact)
    recognisers = (own(coordscope.recognise_run),)
    panel = "none"  # the run view draws them
    sort = "id"
    columns = (
        Column("id", "run", lambda r: text(r.id)),
        Column("status", "status", lambda r: status(r.status)),
    )

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self._ops: dict[str, list[Op]] = defaultdict(list)
        self._readers: dict[str, HistoryReader] = {}
        self._books: dict[str, JourneyBook] = {}
        self._drawn: dict[str, tuple[int, Run]] = {}
        """run id -> (when, the run) as last built."""
        self._built: set[str] = set()
        """Runs that are entities (their hash was read); the other readers are orphans."""

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return str(fact.run_id)

    def observed(self, rec: KeyRecord, fact: Any) -> None:
        """Each read of a history stream brings the entries added since the last one."""
        if isinstance(fact, RunHistoryFact):
            reader = self._readers.setdefault(fact.run_id, HistoryReader())
            ops = self._ops[fact.run_id]
            new = reader.feed(rec.entries)
            ops.extend(new)
            self._books.setdefault(fact.run_id, JourneyBook()).add(new)
            del ops[:-MAX_RUN_OPS]
            orphans = [r for r in self._readers if r not in self._built]
            for run_id in orphans[:-MAX_ORPHANS]:
                self.forget(run_id)

    def bad_entries(self) -> int:
        return sum(r.bad for r in self._readers.values())

    def forget(self, entity_id: str) -> None:
        self._ops.pop(entity_id, None)
        self._readers.pop(entity_id, None)
        self._books.pop(entity_id, None)
        self._drawn.pop(entity_id, None)
        self._built.discard(entity_id)

    def build(self, entity_id: str, members: list[Member]) -> Run | None:
        found = prefer_master(self.view, members, RunFact)
        if found is None:
            return None
        _, rec, fact = found
        meta = fact.meta
        ops = self._ops.get(entity_id, [])
        status_, error = meta.get("status", "?"), meta.get("error", "")
        now = self.view.now()
        last = self._drawn.get(entity_id)
        if last is not None and status_ == last[1].status == "running" and now - last[0] < REDRAW_MS:
            self.view.recheck((self.kind, entity_id), last[0] + REDRAW_MS)  # the ops meanwhile, then
            return last[1]
        alive = _int(meta.get("alive_ms")) or _int(meta.get("started_ms"))
        if status_ == "running" and alive is not None and now - alive <= ABANDONED_MS:
            self.view.recheck((self.kind, entity_id), alive + ABANDONED_MS + 1)
        elif status_ == "running" and alive is not None:
            status_ = "abandoned"
            error = (
                f"the process running it ({meta.get('owner', '?')}) stopped answering: "
                f"no sign of life for over {ABANDONED_MS // 1000} s"
            )
        actors = tuple(_json_list(meta.get("actors")))
        rank = {a: i for i, a in enumerate(actors)}
        # the lanes in the order the scenario lists its actors (the rest after, as they came)
        drawn = tuple(sorted(lanes(ops), key=lambda lane: rank.get(lane.actor, len(rank))))
        verdict = _verdict(meta.get("verdict", ""))
        followed, messages = self._books[entity_id].journeys() if entity_id in self._books else ((), 0)
        if verdict is not None and verdict.keys:  # the messages the checker names went wrong too
            named = set(verdict.keys)
            followed = tuple(replace(j, bad=True) if j.msg in named else j for j in followed)
        self._built.add(entity_id)
        run = Run(
            id=entity_id,
            scenario=meta.get("scenario", "?"),
            status=status_,
            params=_json_dict(meta.get("params", "")),
            faults=tuple(_json_list(meta.get("faults"))),
            started_ms=_int(meta.get("started_ms")),
            ended_ms=_int(meta.get("ended_ms")),
            verdict=verdict,
            actors=actors,
            lanes=drawn,
            legend=tuple(legend(drawn, verdict)),
            journeys=followed,
            messages=messages,
            ops=len(ops),
            last_op=describe(ops[-1]) if ops else "",
            error=error,
            table=_json_table(meta.get("table")),
            as_of_ms=rec.read_at_ms,
        )
        self._drawn[entity_id] = (now, run)
        return run

    def narrate(self, old: Run | None, new: Run | None, cause: str) -> None:
        if new is None or (old is not None and old.status == new.status):
            return
        if old is None and new.status != "running":
            return  # a finished run seen for the first time (at start-up): no news
        line = f"run {new.id} ({new.scenario}) {new.status}"
        if new.verdict is not None:
            line = f"run {new.id} ({new.scenario}) {new.verdict.summary}"
        elif new.error:
            line += f": {new.error}"
        level = {"violated": "warn", "error": "error", "abandoned": "warn"}.get(new.status, "info")
        self.view.log(level, "runs", line)


def describe(op: Op) -> str:
    parts = [f"{op.t_ms}ms", op.actor, op.kind, op.f]
    if op.key and op.key not in op.note:  # a note that names its key already says it
        parts.append(op.key)
    if op.fence is not None:
        parts.append(f"fence {op.fence}")
    if op.note:
        parts.append(op.note)
    return " ".join(parts)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _json_dict(raw: str | None) -> dict[str, str]:
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _json_list(raw: str | None) -> list[str]:
    try:
        data = json.loads(raw or "[]")
    except ValueError:
        return []
    return [str(v) for v in data] if isinstance(data, list) else []


def _json_table(raw: str | None) -> tuple[tuple[str, ...], ...]:
    try:
        rows = json.loads(raw or "[]")
    except ValueError:
        return ()
    if not isinstance(rows, list):
        return ()
    table = [tuple(str(c) for c in row) for row in rows[:500] if isinstance(row, list)]
    if not table:
        return ()
    width = len(table[0])  # every row as wide as the header: the screens rely on it
    return tuple(row[:width] + ("",) * (width - len(row)) for row in table)


def _verdict(raw: str) -> Verdict | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Verdict(
            holds=bool(data["holds"]),
            invariant=str(data["invariant"]),
            summary=str(data["summary"]),
            actors=tuple(str(a) for a in data.get("actors", [])),
            keys=tuple(str(k) for k in data.get("keys", [])),
            at_ms=int(data["at_ms"]) if data.get("at_ms") is not None else None,
            ops=tuple(int(i) for i in data.get("ops", [])),
            findings=tuple(str(f) for f in data.get("findings", [])),
        )
    except (ValueError, KeyError, TypeError):
        return Verdict(holds=False, invariant="?", summary="unreadable verdict")
