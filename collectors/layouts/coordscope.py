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
    ``coordscope:mark:<key>``       hash    idempotency mark: state, owner, ...
    ``coordscope:txn:<id>``         hash    protocol, state, branches (JSON)
    ``coordscope:run:<id>``         hash    a scenario run: scenario, params, faults, status, verdict
    ``coordscope:history:<id>``     stream  the run's operations, one JSON ``op`` field each
    ``coordscope:commands:<id>``    list    faults requested for a running run
"""

from __future__ import annotations

import json

from collectors.layouts.facts import (
    AuxiliaryFact,
    Fact,
    LockFact,
    MarkFact,
    RunFact,
    RunHistoryFact,
    TransactionFact,
    WaitersFact,
)
from collectors.records import KeyRecord, display

PREFIX = "coordscope:"
ZNODE_ROOT = "/coordscope"
LAYOUT = "coordscope"


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


def txn_key(txn_id: str) -> str:
    return f"{PREFIX}txn:{txn_id}"


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


def recognise(rec: KeyRecord) -> Fact | None:
    """Our own keys; anything under ``coordscope:`` we do not know stays raw."""
    key = rec.key
    if not key.startswith(PREFIX):
        return None
    kind, _, rest = key[len(PREFIX) :].partition(":")
    if not rest:
        return None
    if kind == "lock" and rec.type == "string" and rec.value is not None:
        parsed = parse_lock_value(rec.value)
        if parsed is None:
            return LockFact(name=key, layout=LAYOUT, holder=None, token=None, detail="unreadable value")
        owner, fence, nonce = parsed
        return LockFact(name=key, layout=LAYOUT, holder=owner, token=nonce, fence=fence)
    if kind == "waiters" and rec.type == "hash":
        waiters = tuple(
            (display(client), *parse_waiter(value)) for client, value in sorted(rec.fields.items())
        )
        return WaitersFact(lock_name=lock_key(rest), waiters=waiters)
    if kind == "mark" and rec.type == "hash":
        detail = {display(k): display(v) for k, v in rec.fields.items() if k not in (b"state", b"owner")}
        return MarkFact(
            layout=LAYOUT,
            state=_field(rec, "state") or "?",
            owner=_field(rec, "owner") or None,
            detail=detail,
        )
    if kind == "txn" and rec.type == "hash":
        try:
            branches_raw = json.loads(rec.fields.get(b"branches", b"[]"))
            branches = tuple(
                (str(b.get("id", "?")), str(b.get("state", "?")), str(b.get("detail", "")))
                for b in branches_raw
                if isinstance(b, dict)
            )
        except ValueError:
            branches = ()
        return TransactionFact(
            txn_id=rest,
            protocol=_field(rec, "protocol") or "?",
            state=_field(rec, "state") or "?",
            branches=branches,
        )
    if kind == "run" and rec.type == "hash":
        return RunFact(run_id=rest, meta={display(k): display(v) for k, v in rec.fields.items()})
    if kind == "history" and rec.type == "stream":
        return RunHistoryFact(run_id=rest)
    if kind in ("fence", "resource", "commands", "signal", "queue"):
        return AuxiliaryFact(library=LAYOUT, role=kind)
    return None
