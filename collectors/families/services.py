"""Services: the processes a scenario runs (payment services, app instances, workers,
coordinators), as each registered itself in the store.

A service writes ``coordscope:service:<run>:<name>`` when it starts and
refreshes it with a heartbeat (``alive_ms``) and its counters (requests
served, the last request). The family shows a service whose heartbeat has
been quiet for :data:`SILENT_MS` as ``silent`` — paused (SIGSTOP) or dead —
and rebuilds it when that moment comes, so no event is needed for it. The
run that owns a service marks it ``killed`` when a fault SIGKILLs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import (
    Column,
    Family,
    Member,
    fmt_ms,
    own,
    prefer_master,
    status,
    text,
)
from collectors.families.nodes import clock
from collectors.layouts import coordscope
from collectors.layouts.facts import ServiceFact
from collectors.records import KeyRecord

SILENT_MS = 2500
"""A heartbeat quiet this long: the process is paused or dead."""
LIVE = ("starting", "up")


@dataclass(frozen=True)
class Service:
    KIND: ClassVar[str] = "service"
    id: str
    run: str
    name: str
    role: str = ""
    address: str = ""
    pid: int | None = None
    status: str = "starting"
    """starting | up | silent (no heartbeat) | paused | killed | stopping | stopped."""
    started_ms: int | None = None
    alive_ms: int | None = None
    requests: int = 0
    last_request: str = ""
    last_request_ms: int | None = None
    detail: str = ""
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _last(s: Service) -> Any:
    if not s.last_request:
        return text(None)
    return text(f"{clock(s.last_request_ms)} {s.last_request}", title=s.last_request)


class Services(Family):
    kind = "service"
    plural = "services"
    title = "Services"
    entity = Service
    facts = (ServiceFact,)
    recognisers = (own(coordscope.recognise_service),)
    sort = "name"
    empty = "no scenario processes running"
    columns = (
        Column("name", "service", lambda s: text(s.name, "bold", title=s.run)),
        Column("role", "role", lambda s: text(s.role), limit=16),
        Column("status", "status", lambda s: status(s.status)),
        # what it says of itself (HAProxy's servers, sessions in memory, why it was killed)
        # before what any process has: it must not be the column a narrow screen cuts
        Column("detail", "detail", lambda s: text(s.detail or None), limit=34),
        Column("requests", "requests", lambda s: text(s.requests)),
        Column("last", "last request", _last, limit=32),
        Column("address", "address", lambda s: text(s.address)),
        Column("pid", "pid", lambda s: text(s.pid)),
        Column("run", "run", lambda s: text(s.run, "dim"), limit=24),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return f"{fact.run_id}:{fact.name}"

    def build(self, entity_id: str, members: list[Member]) -> Service | None:
        found = prefer_master(self.view, members, ServiceFact)
        if found is None:
            return None
        node_id, rec, fact = found
        f = fact.fields
        state = f.get("status", "starting")
        alive = _int(f.get("alive_ms"))
        detail = f.get("detail", "")
        if state in LIVE and alive is not None:
            quiet = self.view.now() - alive
            if quiet >= SILENT_MS:
                state = "silent"
                detail = f"no heartbeat for {fmt_ms(quiet)}: paused or dead"
            else:
                self.view.recheck((self.kind, entity_id), alive + SILENT_MS)
        return Service(
            id=entity_id,
            run=fact.run_id,
            name=fact.name,
            role=f.get("role", ""),
            address=f.get("address", ""),
            pid=_int(f.get("pid")),
            status=state,
            started_ms=_int(f.get("started_ms")),
            alive_ms=alive,
            requests=_int(f.get("requests")) or 0,
            last_request=f.get("last_request", ""),
            last_request_ms=_int(f.get("last_request_ms")),
            detail=detail,
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self.view.stale(n for n, _ in members),
        )

    def narrate(self, old: Service | None, new: Service | None, cause: str) -> None:
        log = self.view.log
        if new is not None and (old is None or old.status != new.status):
            where = f" on {new.address}" if new.address else ""
            words = {
                "up": f"up{where} (pid {new.pid})",
                "silent": new.detail or "silent",
                "killed": f"killed (pid {new.pid})" + (f": {new.detail}" if new.detail else ""),
            }
            level = "warn" if new.status in ("silent", "killed", "paused") else "info"
            log(level, new.name, f"{new.role or 'service'} {words.get(new.status, new.status)}")
        elif new is None and old is not None:
            gone = {"expired": "registration expired: no heartbeat for 30 s"}.get(cause, "stopped")
            log("info", old.name, f"{old.role or 'service'} {gone}")
