"""Web sessions kept in Redis by Python frameworks' session stores, and by name.

As captured from the real libraries (``python -m tests.tools.capture_sessions``,
redis-py 8.1, a user logged in with ``user="alice"``, a cart and a counter):

Flask-Session 0.8.0 (Flask 3.1, ``SESSION_TYPE="redis"``, defaults):
    ``session:<sid>``  string  msgpack map (``SESSION_SERIALIZATION_FORMAT``
                               ``"msgpack"`` by default, written with msgspec;
                               ``"json"`` when configured), e.g.
                               ``\\x84\\xaa_permanent\\xc3\\xa4user\\xa5alice...``;
                               EX = ``PERMANENT_SESSION_LIFETIME`` (31 days by default).
                               The sid is 43 URL-safe characters. ``session.clear()``
                               deletes the key. Flask-Session before 0.6 wrote a
                               pickle of the dict under the same name (0.8 still
                               reads one): decoded here opcode by opcode, never
                               unpickled (:mod:`collectors.layouts.safepickle`).
starsessions 2.2.1 (``SessionMiddleware`` + ``RedisStore(connection=...)``):
    ``starsessions.<32 hex>``  string  JSON (its ``JsonSerializer``) of the
                               attributes plus ``"__metadata__": {"lifetime": s,
                               "created": epoch s, "last_access": epoch s}``;
                               EX = lifetime (30 days when the cookie lives as long
                               as the browser: its ``gc_ttl``). An emptied session
                               is deleted.

A generic rule: a string or hash whose name has a segment like ``session``,
``sessions``, ``sess`` or ``user_session`` (split at ``:``, ``.`` and ``/``) and
that has a TTL is a session, its value decoded where it is JSON, msgpack or a
pickle of plain values, else shown opaque with its size. It never takes a key
under ``coordscope:`` or one a lock pattern names. A key matching one of the
user's ``session_patterns`` is a session whatever its value or TTL.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import re
from collections.abc import Callable
from typing import Any

from collectors.layouts import safepickle
from collectors.layouts.facts import SessionFact
from collectors.records import KeyRecord, display

FLASK = re.compile(r"^(?P<ns>session):(?P<id>[A-Za-z0-9_-]{16,})$")
STARSESSIONS = re.compile(r"^(?P<ns>starsessions)\.(?P<id>[0-9a-f]{16,})$")
SEGMENTS = re.compile(r"[^:./]+")
SESSION_SEGMENT = re.compile(r"^(?:[a-z0-9]+[_-])?sess(?:ion|ions)?$", re.IGNORECASE)
USER_ATTRIBUTES = ("user", "username", "userId", "user_id", "login", "_user_id", "_auth_user_id")
SERVED_BY_ATTRIBUTES = ("servedBy", "served_by", "instance")
"""Where an app may record the instance that served a session's last request (ours: ``servedBy``)."""
HIDDEN = ("_permanent", "__metadata__")


def recognise(
    rec: KeyRecord, patterns: tuple[str, ...] = (), lock_patterns: tuple[str, ...] = ()
) -> SessionFact | None:
    if rec.type not in ("string", "hash"):
        return None
    key = rec.key
    if rec.type == "string" and rec.value is not None:
        m = FLASK.match(key)
        if m:
            return _fact(rec, "flask-session", m["ns"], m["id"])
        m = STARSESSIONS.match(key)
        if m:
            return _fact(rec, "starsessions", m["ns"], m["id"])
    if any(fnmatch.fnmatchcase(key, p) for p in patterns):
        group, session_id = _split(key)
        return _fact(rec, "by-pattern", group, session_id)
    if rec.ttl_ms is None or key.startswith("coordscope:"):
        return None
    if any(fnmatch.fnmatchcase(key, p) for p in lock_patterns):
        return None
    for segment in SEGMENTS.finditer(key):
        if SESSION_SEGMENT.match(segment.group()):
            rest = key[segment.end() + 1 :]
            return _fact(rec, "by-name", key[: segment.end()], rest or key)
    return None


def decode(raw: bytes) -> tuple[Any, str]:
    """(value, how it was written): json, pickle or msgpack; (None, "") if unreadable."""
    stripped = raw.lstrip()
    if stripped[:1] in (b"{", b"["):
        try:
            return json.loads(raw), "json"
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    if safepickle.is_pickle(raw):
        value = safepickle.decode(raw)
        return (value, "pickle") if value is not None else (None, "")
    unpack = _msgpack()
    if unpack is not None and raw[:1] and (0x80 <= raw[0] <= 0x8F or raw[0] in (0xDE, 0xDF)):
        try:
            return unpack(raw), "msgpack"
        except Exception:  # whatever either library raises on garbage
            return None, ""
    return None, ""


def _fact(rec: KeyRecord, layout: str, group: str, session_id: str) -> SessionFact:
    if rec.type == "hash":
        data: Any = {display(k): _field(v) for k, v in rec.fields.items()}
        encoding = "hash"
    else:
        data, encoding = decode(rec.value or b"")
    if not isinstance(data, dict):
        size = rec.size or len(rec.value or b"")
        why = "truncated" if rec.truncated else "opaque"
        return SessionFact(session_id, layout, None, group=group, encoding=f"{why}, {size} bytes")
    attributes = {str(k): as_text(v) for k, v in data.items() if k not in HIDDEN}
    meta = data.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    lifetime = meta.get("lifetime")
    return SessionFact(
        session_id=session_id,
        layout=layout,
        user=user_of(attributes),
        attributes=attributes,
        created_ms=_ms(meta.get("created")),
        last_access_ms=_ms(meta.get("last_access")),
        max_inactive_s=lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else None,
        group=group,
        encoding=encoding,
    )


def _split(key: str) -> tuple[str, str]:
    for sep in (":", ".", "/"):
        group, found, session_id = key.rpartition(sep)
        if found and group and session_id:
            return group, session_id
    return key, key


def _field(raw: bytes) -> Any:
    value, _ = decode(raw)
    return value if value is not None else display(raw)


def user_of(attributes: dict[str, str]) -> str | None:
    """The user a session's attributes name (the first common attribute for one)."""
    for name in USER_ATTRIBUTES:
        if attributes.get(name):
            return attributes[name]
    return None


def served_by_of(attributes: dict[str, str]) -> str | None:
    """The instance a session's attributes say served its last request."""
    return next((attributes[a] for a in SERVED_BY_ATTRIBUTES if attributes.get(a)), None)


def as_text(value: Any) -> str:
    """An attribute's value as text (JSON for anything but a string)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        return f"<{type(value).__name__}>"


def _ms(value: Any) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e11:
        return int(value * 1000)
    return None


@functools.cache
def _msgpack() -> Callable[[bytes], Any] | None:
    """A msgpack decoder if one is installed (msgspec comes with Flask-Session; the
    ``msgpack`` package otherwise): neither is a dependency of coordscope."""
    try:
        msgspec = importlib.import_module("msgspec.msgpack")
        decode_: Callable[[bytes], Any] = msgspec.decode
        return decode_
    except ImportError:
        pass
    try:
        msgpack = importlib.import_module("msgpack")
    except ImportError:
        return None
    return lambda raw: msgpack.unpackb(raw, raw=False, strict_map_key=False)
