r"""Idempotency records that other libraries leave in Redis: marks, not locks.

An idempotency record is written with ``SET key value NX`` and a TTL, exactly
like a lock; what tells it apart is the value: a status (in progress /
completed, spelled differently by each library) and, once completed, a stored
response. This module reads those values; nothing here does I/O, and nothing
here raises on any bytes, any type (JSON is parsed with ``json`` only — never
pickle — and a failed or too deep parse just means "not this layout").

Observed with ``tests/tools/capture_marks.py`` against redis-server 7.0.15
(``notify-keyspace-events KEA``): the store while a call was in progress (the
handler blocked), after it completed, after it failed, and around expiry.

Powertools for AWS Lambda (Python) 3.37.0, ``aws-lambda-powertools[redis]``,
``persistence.cache.CachePersistenceLayer`` (an alias of
``RedisCachePersistenceLayer``), redis-py 8.1.0 — and the TypeScript twin,
``@aws-lambda-powertools/idempotency`` 2.35.0 ``/cache`` with @redis/client 6.3.1,
which writes the same JSON:

Key ``<function>#<hash>``. The app chooses ``<function>``: Python builds it from
``$AWS_LAMBDA_FUNCTION_NAME`` (``test-func`` when unset), the module and the
qualname (``payments-fn.__main__.charge``), or takes ``key_prefix`` verbatim;
TypeScript uses ``$AWS_LAMBDA_FUNCTION_NAME`` (``payments-ts``). ``<hash>``
digests the event (or the part ``event_key_jmespath`` selects): hex ``md5`` by
default in Python (``hash_function`` may make it 40–128 hex digits), base64 md5
in TypeScript (``y8vblI3ha/5+SagfkVAKsQ==``).

=============================  ======  ================================================  ===============
when                           type    value (exact bytes)                               TTL
=============================  ======  ================================================  ===============
in progress                    string  ``{"status": "INPROGRESS", "expiration":          EX 3600
                                       1795896170, "in_progress_expiration":             (expires_after_
                                       1795892600127}``                                  seconds)
in progress, payload           string  ``{"status": "INPROGRESS", "expiration":          EX 600
validation on (sha256)                 1795893170, "in_progress_expiration":
                                       1795892600243, "validation": "dfcafae6…1db4d"}``
completed                      string  ``{"data": "{\"body\": \"{\\\"payment_id\\\":     EX expiration
                                       \\\"pay-1\\\", …}\", \"statusCode\": 200}",       − now
                                       "status": "COMPLETED", "expiration": 1795896170}``
                                       (``data`` is the result as JSON *text*; TS stores
                                       an object: ``"data":{"statusCode":200,…}``; the
                                       ``validation`` hash is not written again)
failed (the handler raised)    —       deleted (``DEL``): a retry runs again
killed mid-call (Lambda        string  the INPROGRESS record stays; once
timeout), lease elapsed                ``in_progress_expiration`` has passed it is an
                                       "orphan" the next call may take over
a retry takes an orphan over   string  ``<key>:lock`` = ``True`` (TS: ``true``), then    EX 10, never
                                       the record rewritten (``SET`` without ``NX``)     deleted
=============================  ======  ================================================  ===============

``expiration`` is the record's own expiry in epoch **seconds** (the TTL is
computed from it); ``in_progress_expiration`` is epoch **milliseconds**: now +
the Lambda's remaining time (absent when no Lambda context was registered).
No owner is recorded. Events: every write is ``set`` then ``expire``; a failure
adds ``del``; a take-over is ``set``/``expire`` of ``<key>:lock`` then of the
record. A duplicate while in progress sends ``SET … NX`` (refused) and ``GET``:
no event at all.

@node-idempotency/core 1.0.11 with @node-idempotency/storage-adapter-redis 1.0.2
(node-redis 4.7.1, node 20), driven as its README and express plugin do:

Key ``<cacheKeyPrefix>:<METHOD>:<path>:<Idempotency-Key header>``, prefix
``node-idempotency`` by default (a per-request option). Default TTL 24 h
(``cacheTTLMS``), for both states.

=============================  ======  ================================================  ===========
when                           type    value (exact bytes)                               TTL
=============================  ======  ================================================  ===========
in progress (``onRequest``)    string  ``{"status":"IN_PROGRESS","fingerPrint":"4bd6f3…  PX 86400000
                                       1cd8"}`` (blake2s256 of the JSON body; no
                                       ``fingerPrint`` when there is no body)
completed (``onResponse``)     string  ``{"status":"COMPLETE","fingerPrint":"4bd6…",     PX 86400000
                                       "response":{"additional":{"statusCode":201},      (reset)
                                       "body":{"id":"ch_3QkL9x",…}}}``
failed (a ≥ 400 answer)        string  ``…"COMPLETE"…"response":{"additional":           PX 86400000
                                       {"statusCode":402},"error":{"message":"card
                                       declined",…}}}``: replayed like a success
crashed (no ``onResponse``)    string  stays IN_PROGRESS for the whole TTL: there is     PX 86400000
                                       no in-progress expiry
=============================  ======  ================================================  ===========

Events: ``set``, ``expire`` for each write; a duplicate (``SET … NX`` refused,
``GET``) and a replay cause none.

Generic rule. A string or hash whose *name* says idempotency and whose value
carries a status-like field: a hash field or a JSON field named ``status`` or
``state`` (or the whole plain value) reading one of :data:`STATES`' spellings.
The name words, matched case-insensitively: ``idempot`` anywhere (idempotency,
idempotent, userIdempotencyKey); ``idem`` at the start of a word (``idem:``,
``idem_key``, ``IdemKey`` — but not ``ridematch``); ``dedup``/``de-dup``
(dedupe, deduplication); ``request-id`` / ``request_id`` / ``requestId`` as a
whole word (a request-id table is how many services deduplicate; not
``request_identity``). Both conditions must hold, so a ``status`` JSON under
``user:7`` or a token under ``idem:x`` are not claimed here.

The in-progress spellings include ``pending`` and ``started``: under a name
that says idempotency they mean a claimed request not answered yet.

Config patterns (``[layouts] mark_patterns``): a key matching one is a mark
whatever its name or type; its state comes from the status field when there is
one it can read, else ``SET``.

What :func:`recognise` reports is what the value says, as of the read: an
in-progress record whose lease (``lease_until_ms``) has passed is still
IN_PROGRESS here (the marks family decides how to show a stale claim), while a
Powertools record read after its own ``expiration`` is EXPIRED, as Powertools
itself judges it. Powertools' ``<key>:lock`` helper is neither a mark nor a
held lock: :func:`auxiliary` names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import json
import math
import re
from typing import Any

from collectors.layouts.facts import AuxiliaryFact, MarkFact
from collectors.records import KeyRecord, display

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
EXPIRED = "EXPIRED"
FAILED = "FAILED"
SET = "SET"
"""A mark (by a config pattern) whose state we cannot read."""

STATES = {
    IN_PROGRESS: ("inprogress", "processing", "pending", "started", "running", "inflight", "locked"),
    COMPLETED: ("completed", "complete", "done", "succeeded", "success", "successful", "finished", "ok"),
    FAILED: ("failed", "failure", "error", "errored"),
    EXPIRED: ("expired",),
}
_SPELLINGS = {word: state for state, words in STATES.items() for word in words}

IDEMPOTENCY_WORDS = re.compile(
    r"idempot|(?<![a-z])idem|de[-_]?dup|(?<![a-z])request[-_.]?id(?![a-z])", re.IGNORECASE
)
POWERTOOLS_KEY = re.compile(r"^(?P<function>.+)#(?P<hash>[0-9a-f]{32,128}|[A-Za-z0-9+/]{22,}={0,2})$")
POWERTOOLS_FIELDS = frozenset({"status", "expiration", "in_progress_expiration", "validation", "data"})
POWERTOOLS_STATES = {"INPROGRESS": IN_PROGRESS, "COMPLETED": COMPLETED, "EXPIRED": EXPIRED}
NODE_KEY = re.compile(
    r"^(?P<prefix>.*?):(?P<method>GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS):(?P<path>/.*):(?P<key>[^:]*)$",
    re.DOTALL,
)
NODE_FIELDS = frozenset({"status", "fingerPrint", "response"})
NODE_STATES = {"IN_PROGRESS": IN_PROGRESS, "COMPLETE": COMPLETED}

MAX_KEY = 2048
"""Longer keys are not matched against the library key shapes (regexes stay cheap)."""
MAX_FIELDS = 512
MAX_WORD = 32
PREVIEW = 80
LONG = 200
"""Owners and fingerprints: whole when they are hashes (sha512 is 128 hex digits)."""
MAX_DETAIL = 12

STATUS_FIELDS = ("status", "state")
OWNER_FIELDS = ("owner", "holder", "lockedby", "worker", "workerid", "instance", "instanceid", "clientid")
FINGERPRINT_FIELDS = ("fingerprint", "payloadhash", "requesthash", "bodyhash", "validation", "checksum")
CODE_FIELDS = ("statuscode", "code", "httpstatus", "responsecode")
BODY_FIELDS = ("response", "body", "result", "data", "responsebody")
LEASE_FIELDS = ("leaseuntil", "leaseuntilms", "leaseexpiresat", "lockeduntil", "inprogressexpiration")
EXPIRY_FIELDS = ("expiresat", "expireat", "expiration", "expiry", "expires")
KNOWN_FIELDS = frozenset(
    STATUS_FIELDS
    + OWNER_FIELDS
    + FINGERPRINT_FIELDS
    + CODE_FIELDS
    + BODY_FIELDS
    + LEASE_FIELDS
    + EXPIRY_FIELDS
)


def recognise(rec: KeyRecord, patterns: tuple[str, ...] = ()) -> MarkFact | None:
    """The mark this key is, or None: library layouts first, then config patterns, then the generic rule."""
    key = rec.key
    if key.startswith("coordscope:"):  # our own marks are parsed by collectors.layouts.coordscope
        return None
    doc = _json_object(rec.value) if rec.type == "string" else None
    if doc is not None and len(key) <= MAX_KEY:
        found = _powertools(rec, doc) or _node_idempotency(rec, doc)
        if found is not None:
            return found
    if any(fnmatch.fnmatchcase(key, p) for p in patterns):
        return _from_fields(rec, doc, "pattern") or MarkFact(layout="pattern", state=SET)
    if IDEMPOTENCY_WORDS.search(key):
        return _from_fields(rec, doc, "generic")
    return None


def auxiliary(rec: KeyRecord) -> AuxiliaryFact | None:
    """A helper key that is not a mark and must not show as a held lock.

    Powertools' ``<record key>:lock`` (value ``True``/``true``, EX 10, never
    deleted) only guards the take-over of an orphaned record for ten seconds.
    """
    key = rec.key
    if (
        rec.type == "string"
        and rec.value in (b"True", b"true")
        and key.endswith(":lock")
        and len(key) <= MAX_KEY
        and POWERTOOLS_KEY.match(key[: -len(":lock")])
    ):
        return AuxiliaryFact(library="powertools", role="orphan take-over lock")
    return None


# ------------------------------------------------------------------ the libraries


def _powertools(rec: KeyRecord, doc: dict[str, Any]) -> MarkFact | None:
    status = doc.get("status")
    if not isinstance(status, str) or status not in POWERTOOLS_STATES or not set(doc) <= POWERTOOLS_FIELDS:
        return None
    named = POWERTOOLS_KEY.match(rec.key)
    if not (_is_int(doc.get("expiration")) or named):
        return None
    state = POWERTOOLS_STATES[status]
    expires = _timestamp_ms(doc.get("expiration"))
    if expires is not None and expires <= rec.read_at_ms:
        state = EXPIRED  # as the library judges it (DataRecord.is_expired), as of the read
    lease = _timestamp_ms(doc.get("in_progress_expiration")) if state == IN_PROGRESS else None
    detail = {"status": status}
    if named:
        detail["function"] = _preview(named["function"])
    return MarkFact(
        layout="powertools",
        state=state,
        fingerprint=_optional(doc.get("validation"), LONG),
        response=_response(doc.get("data")),
        lease_until_ms=lease,
        expires_at_ms=expires,
        detail=detail,
    )


def _node_idempotency(rec: KeyRecord, doc: dict[str, Any]) -> MarkFact | None:
    status = doc.get("status")
    if not isinstance(status, str) or status not in NODE_STATES or not set(doc) <= NODE_FIELDS:
        return None
    named = NODE_KEY.match(rec.key)
    finger = doc.get("fingerPrint")
    if not (named or rec.key.startswith("node-idempotency:") or isinstance(finger, str)):
        return None
    detail = {"status": status}
    if named:
        detail.update(
            method=named["method"], path=_preview(named["path"]), idempotency_key=_preview(named["key"])
        )
    response = doc.get("response")
    if isinstance(response, dict) and "error" in response:
        detail["outcome"] = "error"  # stored as COMPLETE and replayed like a success
    return MarkFact(
        layout="node-idempotency",
        state=NODE_STATES[status],
        fingerprint=_optional(finger, LONG),
        response=_response(response),
        detail=detail,
    )


# ------------------------------------------------------------------ generic and pattern marks


def _from_fields(rec: KeyRecord, doc: dict[str, Any] | None, layout: str) -> MarkFact | None:
    """A mark read from named fields (a hash, a JSON object) or from a plain status word.

    The generic rule needs a state it can read; a pattern mark without one is ``SET``.
    """
    need_state = layout == "generic"
    if rec.type == "hash":
        fields: dict[str, Any] = {display(k): display(v) for k, v in list(rec.fields.items())[:MAX_FIELDS]}
    elif doc is not None:
        fields = doc
    elif rec.type == "string" and rec.value is not None:
        word = display(rec.value[: MAX_WORD + 1]).strip()
        state = _state(word) if len(word) <= MAX_WORD else None
        if state is not None:
            return MarkFact(layout=layout, state=state, detail={"status": word})
        return None if need_state else MarkFact(layout=layout, state=SET, detail={"value": _preview(word)})
    else:
        return None
    by_name = {_norm(name): (name, value) for name, value in list(fields.items())[:MAX_FIELDS]}
    status = _first(by_name, STATUS_FIELDS)
    state = _state(status) if isinstance(status, str) else None
    if state is None and need_state:
        return None
    detail = {"status": _preview(status)} if status is not None else {}
    for norm, (name, value) in by_name.items():
        if len(detail) >= MAX_DETAIL:
            break
        if norm not in KNOWN_FIELDS and _scalar(value) is not None:
            detail[_preview(name)] = _preview(value)
    code = _first(by_name, CODE_FIELDS)
    return MarkFact(
        layout=layout,
        state=state or SET,
        owner=_optional(_first(by_name, OWNER_FIELDS), LONG),
        fingerprint=_optional(_first(by_name, FINGERPRINT_FIELDS), LONG),
        response=_preview(code) if _scalar(code) is not None else _response(_first(by_name, BODY_FIELDS)),
        lease_until_ms=_timestamp_ms(_first(by_name, LEASE_FIELDS)),
        expires_at_ms=_timestamp_ms(_first(by_name, EXPIRY_FIELDS)),
        detail=detail,
    )


def _state(word: str) -> str | None:
    return _SPELLINGS.get(_norm(word))


def _norm(name: str) -> str:
    """``IN_PROGRESS``, ``in-progress``, ``In Progress``, ``inProgress`` -> ``inprogress``."""
    return "".join(c for c in name[: MAX_WORD * 2].lower() if c.isalnum())


def _first(by_name: dict[str, tuple[str, Any]], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in by_name:
            return by_name[name][1]
    return None


# ------------------------------------------------------------------ reading values safely


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    """The value as a JSON object, or None (not JSON, not an object, too deep, not text)."""
    if not raw or raw.lstrip()[:1] != b"{":
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def _response(value: Any) -> str | None:
    """A stored response as a status code when it has one, else a short preview."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        with contextlib.suppress(ValueError, RecursionError):
            value = json.loads(value)  # Powertools (Python) stores the result as JSON text
    if isinstance(value, dict):
        additional = value.get("additional")  # node-idempotency: {"additional": {"statusCode": 201}}
        for holder in (value, additional if isinstance(additional, dict) else {}):
            for name, inner in holder.items():
                if _norm(str(name)) in CODE_FIELDS and _scalar(inner) is not None:
                    return _preview(inner)
        for name in ("body", "error", "result", "data"):
            if value.get(name) is not None:
                return _preview(value[name])
    if value is None or value == "" or value == {}:
        return None
    return _preview(value)


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def _preview(value: Any, limit: int = PREVIEW) -> str:
    """At most ``limit`` characters of a value: never a whole body."""
    text = _scalar(value)
    if text is None:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))[: limit + 1]
        except (ValueError, TypeError, RecursionError):
            text = "?"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _optional(value: Any, limit: int = PREVIEW) -> str | None:
    return None if value is None or value == "" else _preview(value, limit)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _timestamp_ms(value: Any) -> int | None:
    """Epoch seconds, milliseconds, micro- or nanoseconds, or ISO 8601 text, as epoch ms."""
    number: float
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not 0 < value < 10**20:  # also keeps float() below from overflowing on huge JSON ints
            return None
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            return _iso_ms(value)
    else:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    if number < 1e11:  # seconds (until the year 5138)
        return int(number * 1000)
    if number < 1e14:  # milliseconds
        return int(number)
    if number < 1e17:  # microseconds
        return int(number // 1000)
    return int(number // 1_000_000) if number < 1e20 else None


def _iso_ms(text: str) -> int | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)
