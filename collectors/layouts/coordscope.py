"""coordscope's own layout: every key and znode its scenarios write.

All of them live under ``coordscope:`` in Redis and ``/coordscope`` in
ZooKeeper, so a scenario never touches anyone else's data. Names are built
and parsed here and nowhere else; scenarios import the builders, the
recogniser below parses.

Redis
    ``coordscope:lock:<name>``      string  JSON ``{"owner", "fence", "nonce"}``, PX ttl
    ``coordscope:fence:<name>``     string  the fencing counter (INCR in the acquire script)
    ``coordscope:waiters:<name>``   hash    client -> ``<since_ms>:<polls>:<last_seen_ms>``
    ``coordscope:queue:<name>``     list    waiters of a fair lock, oldest first
    ``coordscope:signal:<name>:<client>`` list  a release's wake-up token for that waiter
    ``coordscope:resource:<name>``  hash    the protected resource: value, fence, writer, writes, rejected
    ``coordscope:mark:<key>``       hash    idempotency mark: state, owner, fingerprint, lease_until,
                                            code, body (see scenarios/idempotency/marks.py)
    ``coordscope:service:<run>:<name>`` hash  a scenario's process: role, address, pid, status,
                                            alive_ms, requests, last_request
    ``coordscope:txn:<id>``         hash    a TCC transaction as its coordinator keeps it: protocol,
                                            state, since_ms, branches (JSON ``[{"id", "state",
                                            "detail"}]``)
    ``coordscope:ordering:{<run>}:ring``  hash  the ordering run's router: route, workers, vnodes,
                                            version, points, orders, queues, change (JSON fields)
    ``coordscope:ordering:{<run>}:q:<worker>``  stream  a worker's queue (consumer group ``workers``)
    ``coordscope:ordering:{<run>}:order:<order>``  hash  the order as applied: state, seq, applied, log
    ``coordscope:mark:{<run>}:<order>#<seq>``  hash  an event's applied mark (``dedup=on``)
    ``coordscope:session:{<run>}:sessions:<id>``  hash  the session run's sessions in Spring
                                            Session's layout, its namespace ``coordscope:session:{<run>}``
                                            (with ``…:sessions:expires:<id>``, ``…:expirations:<minute>``
                                            and ``…:index:…PRINCIPAL_NAME_INDEX_NAME:<user>``)
    ``coordscope:session:{<run>}:container:<id>``  string  a container-coupled session: one opaque
                                            blob (``store=container``), PX the idle timeout
    ``coordscope:run:<id>``         hash    a scenario run: scenario, params, faults, status, verdict
    ``coordscope:history:<id>``     stream  the run's operations, one JSON ``op`` field each
    ``coordscope:commands:<id>``    list    faults requested for a running run

ZooKeeper
    ``/coordscope/locks/<name>/<owner>__lock__<seq>``  ephemeral sequential: a lock contender
    ``/coordscope/2pc/<run>/<coordinator>/<txn>``  a two-phase commit coordinator's log, one
                                            znode per transaction, JSON ``{"state", "since_ms",
                                            "created_ms", "coordinator", "transfer", "branches":
                                            [{"id", "vote", "state"}], "decision"}``

PostgreSQL
    a branch of a 2PC transaction is prepared with the gid
    ``coordscope:<run>:<coordinator>/<txn>:<participant>`` (:func:`branch_gid`), so a
    prepared transaction in ``pg_prepared_xacts`` joins its coordinator's log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from collectors.layouts.facts import (
    Applied,
    AuxiliaryFact,
    Fact,
    GroupFact,
    LockFact,
    MarkFact,
    OrderFact,
    RingFact,
    RunFact,
    RunHistoryFact,
    ServiceFact,
    TransactionFact,
    TwoPcLogFact,
    WaitersFact,
)
from collectors.records import KeyRecord, ZNodeRecord, display
from collectors.sequence import sequence_breaches

PREFIX = "coordscope:"
ZNODE_ROOT = "/coordscope"
LAYOUT = "coordscope"


def slot_tagged(name: str) -> str:
    """A name whose keys (``lock:``, ``fence:``, ``waiters:``... of it) all hash to one slot
    of a Redis Cluster, as a script that touches several of them needs: ``{name}``."""
    return f"{{{name}}}"


def lock_key(name: str) -> str:
    return f"{PREFIX}lock:{name}"


def fence_key(name: str) -> str:
    return f"{PREFIX}fence:{name}"


def waiters_key(name: str) -> str:
    return f"{PREFIX}waiters:{name}"


def signal_key(name: str, client: str) -> str:
    """A queued waiter's wake-up list (with ``client=""``: the prefix of them all)."""
    return f"{PREFIX}signal:{name}:{client}"


def queue_key(name: str) -> str:
    return f"{PREFIX}queue:{name}"


def lock_keys(name: str, clients: list[str]) -> list[str]:
    """Every key our Redis lock ``name`` may leave behind, for cleanup."""
    return [
        lock_key(name),
        fence_key(name),
        waiters_key(name),
        queue_key(name),
        *(signal_key(name, c) for c in clients),
    ]


def resource_key(name: str) -> str:
    return f"{PREFIX}resource:{name}"


def mark_key(key: str) -> str:
    return f"{PREFIX}mark:{key}"


def ordering_key(run_id: str, part: str) -> str:
    """A key of an ordering run; every one of them hashes to the run's slot (``{run}``), so
    one script may touch an order and its event's mark on a Redis Cluster too."""
    return f"{PREFIX}ordering:{slot_tagged(run_id)}:{part}"


def ring_key(run_id: str) -> str:
    return ordering_key(run_id, "ring")


def worker_queue_key(run_id: str, worker: str) -> str:
    return ordering_key(run_id, f"q:{worker}")


def order_key(run_id: str, order: str) -> str:
    return ordering_key(run_id, f"order:{order}")


def event_mark_key(run_id: str, order: str, seq: int) -> str:
    """The mark that says an order's event was applied (shown with the other marks)."""
    return mark_key(f"{slot_tagged(run_id)}:{order}#{seq}")


WORKER_GROUP = "workers"
"""The consumer group on every worker's queue."""


def session_namespace(run_id: str) -> str:
    """The Spring Session namespace of a session run (its keys share the run's slot)."""
    return f"{PREFIX}session:{slot_tagged(run_id)}"


CONTAINER_SESSION = "container"


def container_session_key(run_id: str, session_id: str) -> str:
    return f"{session_namespace(run_id)}:{CONTAINER_SESSION}:{session_id}"


def parse_container_session(key: str) -> str | None:
    """The session id of a container blob's key (``…session:{<run>}:container:<id>``)."""
    head, sep, session_id = key.rpartition(f":{CONTAINER_SESSION}:")
    if not sep or not session_id or ":" in session_id or not head.startswith(f"{PREFIX}session:{{"):
        return None
    return session_id if head.endswith("}") else None


def service_key(run_id: str, name: str) -> str:
    return f"{PREFIX}service:{run_id}:{name}"


def txn_key(txn_id: str) -> str:
    return f"{PREFIX}txn:{txn_id}"


TWO_PC_ROOT = f"{ZNODE_ROOT}/2pc"
TWO_PC_TXN = re.compile(r"^/coordscope/2pc/(?P<run>[^/]+)/(?P<coordinator>[^/]+)/(?P<txn>[^/]+)$")


def two_pc_log(run_id: str, coordinator: str = "") -> str:
    """The znode under which a 2PC run's coordinators log (one of them: ``coordinator``)."""
    return f"{TWO_PC_ROOT}/{run_id}" + (f"/{coordinator}" if coordinator else "")


def two_pc_txn_id(run_id: str, coordinator: str, txn: str) -> str:
    """A 2PC transaction's global id: ``<run>:<coordinator>/<txn>``."""
    return f"{run_id}:{coordinator}/{txn}"


def branch_gid(txn_id: str, participant: str) -> str:
    """The gid a participant's branch is prepared with (at most 200 bytes in PostgreSQL)."""
    return f"{PREFIX}{txn_id}:{participant}"


def branch_gid_prefix(run_id: str, coordinator: str = "") -> str:
    """What the gids of a run's branches (of one of its coordinators) start with."""
    return f"{PREFIX}{run_id}:" + (f"{coordinator}/" if coordinator else "")


def parse_branch_gid(gid: str) -> tuple[str, str] | None:
    """(global transaction id, participant) of one of our branches' gid, else None."""
    if not gid.startswith(PREFIX):
        return None
    txn_id, sep, participant = gid[len(PREFIX) :].rpartition(":")
    if not sep or not participant or ":" not in txn_id or "/" not in txn_id:
        return None
    return txn_id, participant


def recognise_two_pc(path: str, children: Sequence[ZNodeRecord], config: object = None) -> GroupFact | None:
    """A 2PC coordinator's log entry (the znode itself is read by the family)."""
    m = TWO_PC_TXN.match(path)
    if m is None:
        return None
    return TwoPcLogFact(path=path, txn_id=two_pc_txn_id(m["run"], m["coordinator"], m["txn"]))


def read_two_pc(rec: ZNodeRecord, txn_id: str) -> TransactionFact:
    """A coordinator's log entry as a transaction (garbage in it reads ``?``)."""
    try:
        data = json.loads(rec.data)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return TransactionFact(txn_id=txn_id, protocol="2PC", state="?", layout=LAYOUT)
    branches = []
    for b in data.get("branches", ()) if isinstance(data.get("branches"), list) else ():
        if isinstance(b, dict):
            vote = str(b.get("vote", ""))
            detail = f"voted {vote}" if vote else "no vote yet"
            branches.append((str(b.get("id", "?")), str(b.get("state", "?")), detail))
    since = data.get("since_ms")
    coordinator = str(data.get("coordinator", "?"))
    return TransactionFact(
        txn_id=txn_id,
        protocol=f"2PC, {coordinator}'s log in ZooKeeper",
        state=str(data.get("state", "?")),
        branches=tuple(branches),
        since_ms=since if _whole(since) else None,
        layout=LAYOUT,
        note=_transfer(data.get("transfer")),
    )


def _transfer(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    return f"{value.get('amount', '?')} from {value.get('from', '?')} to {value.get('to', '?')}"


def run_key(run_id: str) -> str:
    return f"{PREFIX}run:{run_id}"


def history_key(run_id: str) -> str:
    return f"{PREFIX}history:{run_id}"


def commands_key(run_id: str) -> str:
    return f"{PREFIX}commands:{run_id}"


def lock_value(owner: str, fence: int | None, nonce: str) -> str:
    """The value of our locks (the acquire script builds the same JSON with cjson);
    RedLock has no fencing token, so its values carry none."""
    body: dict[str, object] = {"owner": owner, "nonce": nonce}
    if fence is not None:
        body["fence"] = fence
    return json.dumps(body, separators=(",", ":"))


def parse_lock_value(raw: bytes) -> tuple[str, int | None, str] | None:
    """(owner, fence, nonce) from a lock value, or None when it is not ours."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("owner"), str):
        return None
    fence = data.get("fence")
    return (
        data["owner"],
        fence if isinstance(fence, int) else None,
        str(data.get("nonce", "")),
    )


def parse_waiter(raw: bytes) -> tuple[int | None, int | None]:
    """(since_ms, polls) from a waiters-hash value ``<since_ms>:<polls>[:<last_seen_ms>]``."""
    since, _, rest = display(raw).partition(":")
    polls = rest.partition(":")[0]
    return (int(since) if since.isdigit() else None, int(polls) if polls.isdigit() else None)


def _field(rec: KeyRecord, name: str) -> str:
    return display(rec.fields.get(name.encode(), b""))


def _ours(rec: KeyRecord, *kinds: str) -> tuple[str, str] | None:
    """(kind, rest) of one of our keys of these kinds, else None."""
    key = rec.key
    if not key.startswith(PREFIX):
        return None
    kind, _, rest = key[len(PREFIX) :].partition(":")
    return (kind, rest) if kind in kinds and rest else None


def _ms(rec: KeyRecord, name: str) -> int | None:
    raw = _field(rec, name)
    return int(raw) if raw.isdigit() else None


def recognise_lock(rec: KeyRecord) -> Fact | None:
    """Our locks and the waiters queueing for them."""
    ours = _ours(rec, "lock", "waiters")
    if ours is None:
        return None
    kind, rest = ours
    if kind == "lock" and rec.type == "string" and rec.value is not None:
        parsed = parse_lock_value(rec.value)
        if parsed is None:
            return LockFact(name=rec.key, layout=LAYOUT, holder=None, token=None, detail="unreadable value")
        owner, fence, nonce = parsed
        return LockFact(name=rec.key, layout=LAYOUT, holder=owner, token=nonce, fence=fence)
    if kind == "waiters" and rec.type == "hash":
        waiters = tuple(
            (display(client), *parse_waiter(value)) for client, value in sorted(rec.fields.items())
        )
        return WaitersFact(lock_name=lock_key(rest), waiters=waiters)
    return None


MARK_FIELDS = {b"state", b"owner", b"fingerprint", b"lease_until", b"code", b"body"}


def recognise_mark(rec: KeyRecord) -> Fact | None:
    """Our idempotency marks: ABSENT -> IN_PROGRESS{owner, fingerprint, lease} -> COMPLETED{code, body}."""
    if _ours(rec, "mark") is None or rec.type != "hash":
        return None
    detail = {display(k): display(v[:200]) for k, v in rec.fields.items() if k not in MARK_FIELDS}
    if b"body" in rec.fields:
        detail["body"] = _field(rec, "body")[:200]
    return MarkFact(
        layout=LAYOUT,
        state=_field(rec, "state") or "?",
        owner=_field(rec, "owner") or None,
        fingerprint=_field(rec, "fingerprint") or None,
        response=_field(rec, "code") or None,
        lease_until_ms=_ms(rec, "lease_until"),
        detail=detail,
    )


def recognise_ordering(rec: KeyRecord) -> Fact | None:
    """An ordering run's ring (its router's state) and its orders as applied. Its workers'
    queues are streams with a consumer group: the queues family's, like anyone's."""
    ours = _ours(rec, "ordering")
    if ours is None or rec.type != "hash" or not ours[1].startswith("{"):
        return None
    run_id, _, part = ours[1][1:].partition("}:")
    if not run_id or not part:
        return None
    if part == "ring":
        return parse_ring(run_id, {display(k): display(v) for k, v in rec.fields.items()})
    if part.startswith("order:") and len(part) > len("order:"):
        return OrderFact(
            run_id=run_id,
            order=part[len("order:") :],
            state=_field(rec, "state"),
            applied=judged(parse_log(_field(rec, "log"))),
        )
    return None


RING_SIZE = 1 << 32


def parse_ring(run_id: str, fields: dict[str, str]) -> RingFact:
    """The router's hash (see :meth:`scenarios.ordering.router.Router.fields`), leniently:
    what is not what it should be is left out, never fatal."""
    workers = tuple(str(w) for w in _json(fields, "workers", []))
    points = tuple(
        sorted(
            (p[0], p[1])
            for p in _json(fields, "points", [])
            if isinstance(p, list) and len(p) == 2 and all(_whole(x) for x in p) and 0 <= p[1] < len(workers)
        )
    )
    placed: dict[str, tuple[int | None, str]] = {}
    for order, where in _json(fields, "orders", {}).items():
        if isinstance(where, list) and len(where) == 2:
            placed[str(order)] = (where[0] if _whole(where[0]) and where[0] >= 0 else None, str(where[1]))
    change = _json(fields, "change", {})
    split: dict[str, tuple[tuple[str, ...], int | None]] = {}
    for order, what in _json(fields, "split", {}).items():
        if isinstance(what, dict):
            since = what.get("since_ms")
            held = tuple(str(w) for w in what.get("workers", []) if isinstance(w, str))
            split[str(order)] = (held, since if _whole(since) else None)
    version, vnodes, at = fields.get("version", ""), fields.get("vnodes", ""), change.get("at_ms")
    return RingFact(
        run_id=run_id,
        route=fields.get("route", "?"),
        version=int(version) if version.isdigit() else 0,
        vnodes=int(vnodes) if vnodes.isdigit() else 0,
        workers=workers,
        leaving=tuple(str(w) for w in _json(fields, "leaving", []) if str(w) not in workers),
        queues={str(k): str(v) for k, v in _json(fields, "queues", {}).items()},
        points=points,
        arcs=_arcs(points, len(workers)) if points else (),
        placed=placed,
        change=str(change.get("what", "")),
        changed_ms=at if _whole(at) and at > 0 else None,
        moved={
            str(m[0]): f"{m[1]} -> {m[2]}"
            for m in change.get("moved", [])
            if isinstance(m, list) and len(m) == 3
        },
        split=split,
    )


def parse_log(raw: str) -> tuple[Applied, ...]:
    """An order's log — ``<seq> <consumer> <t_ms> <entry id>`` per application, ``;`` apart,
    in the order applied — garbage entries skipped."""
    out = []
    for entry in raw.split(";"):
        parts = entry.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[2].lstrip("-").isdigit():
            out.append(Applied(int(parts[0]), parts[1], int(parts[2])))
    return tuple(out)


def judged(applied: tuple[Applied, ...]) -> tuple[Applied, ...]:
    """The applications, each marked with the breach it made (if any)."""
    kinds = {b.position: b.kind for b in sequence_breaches(a.seq for a in applied)}
    return tuple(replace(a, breach=kinds.get(i, "")) for i, a in enumerate(applied))


def _arcs(points: tuple[tuple[int, int], ...], workers: int) -> tuple[float, ...]:
    """Each worker's fraction of the circle (a point owns the arc up to itself)."""
    arcs = [0] * workers
    previous = points[-1][0] - RING_SIZE
    for point, index in points:
        arcs[index] += point - previous
        previous = point
    return tuple(a / RING_SIZE for a in arcs)


def _json(fields: dict[str, str], name: str, default: Any) -> Any:
    """A JSON field of the type ``default`` has, else ``default``."""
    try:
        value = json.loads(fields.get(name, ""))
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def recognise_transaction(rec: KeyRecord) -> Fact | None:
    ours = _ours(rec, "txn")
    if ours is None or rec.type != "hash":
        return None
    try:
        branches_raw = json.loads(rec.fields.get(b"branches", b"[]"))
        branches = tuple(
            (str(b.get("id", "?")), str(b.get("state", "?")), str(b.get("detail", "")))
            for b in branches_raw
            if isinstance(b, dict)
        )
    except (ValueError, TypeError):
        branches = ()
    return TransactionFact(
        txn_id=ours[1],
        protocol=_field(rec, "protocol") or "?",
        state=_field(rec, "state") or "?",
        branches=branches,
        since_ms=_ms(rec, "since_ms"),
        note=_field(rec, "note"),
    )


def recognise_run(rec: KeyRecord) -> Fact | None:
    """A run's hash (status, params, verdict) and its history stream."""
    ours = _ours(rec, "run", "history")
    if ours is None:
        return None
    kind, rest = ours
    if kind == "run" and rec.type == "hash":
        return RunFact(run_id=rest, meta={display(k): display(v) for k, v in rec.fields.items()})
    if kind == "history" and rec.type == "stream":
        return RunHistoryFact(run_id=rest)
    return None


def recognise_service(rec: KeyRecord) -> Fact | None:
    """A scenario's process, registered by itself (see scenarios/kit/services.py)."""
    ours = _ours(rec, "service")
    if ours is None or rec.type != "hash":
        return None
    run_id, _, name = ours[1].rpartition(":")
    if not run_id or not name:
        return None
    return ServiceFact(
        run_id=run_id, name=name, fields={display(k): display(v) for k, v in rec.fields.items()}
    )


AUXILIARY = ("fence", "resource", "commands", "signal", "queue", "cleanup")


def recognise_auxiliary(rec: KeyRecord) -> Fact | None:
    """Helper keys of our scenarios: listed raw, with what they are for."""
    ours = _ours(rec, *AUXILIARY)
    return AuxiliaryFact(library=LAYOUT, role=ours[0]) if ours else None


def recognise(rec: KeyRecord) -> Fact | None:
    """Any of our own keys; anything under ``coordscope:`` we do not know stays raw."""
    for one in (
        recognise_lock,
        recognise_mark,
        recognise_transaction,
        recognise_ordering,
        recognise_run,
        recognise_service,
        recognise_auxiliary,
    ):
        fact = one(rec)
        if fact is not None:
            return fact
    return None
