"""Web sessions kept in Redis by Spring Session and by connect-redis.

Spring Session (indexed repository), namespace ``spring:session`` by default:
    ``<ns>:sessions:<id>``          hash   creationTime, lastAccessedTime,
                                           maxInactiveInterval, sessionAttr:<name>
                                           (Java-serialized values); TTL idle+300 s
    ``<ns>:sessions:expires:<id>``  string empty; TTL = the idle timeout. While it
                                           exists the session is live; without it
                                           the hash is in its 5-minute grace.
    ``<ns>:expirations:<minute>``   set    cleanup bucket (auxiliary)
    ``<ns>:index:<index>:<value>``  set    principal index (auxiliary)

coordscope's container-coupled sessions (the session run's ``store=container``):
    ``coordscope:session:{<run>}:container:<id>``  string  one opaque blob, PX idle

connect-redis (express-session):
    ``sess:<id>``  string  JSON ``{"cookie": {...}, <attributes>}``, EX ttl
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

from collectors.layouts import coordscope, javaser
from collectors.layouts.facts import AuxiliaryFact, Fact, SessionFact, SessionShadowFact
from collectors.layouts.session_stores import as_text, user_of
from collectors.records import KeyRecord, display

SPRING_SESSION = re.compile(r"^(?P<ns>.+):sessions:(?P<id>[^:]+)$")
SPRING_SHADOW = re.compile(r"^(?P<ns>.+):sessions:expires:(?P<id>[^:]+)$")
SPRING_AUX = re.compile(r"^(?P<ns>.+):(?P<role>expirations|index):.+$")
SPRING_FIELDS = (b"creationTime", b"lastAccessedTime", b"maxInactiveInterval")
ATTR_PREFIX = "sessionAttr:"
PRINCIPAL = "org.springframework.session.FindByIndexNameSessionRepository.PRINCIPAL_NAME_INDEX_NAME"


def recognise(rec: KeyRecord, json_patterns: tuple[str, ...] = ("sess:*",)) -> Fact | None:
    key = rec.key
    if rec.type == "hash" and any(f in rec.fields for f in SPRING_FIELDS):
        m = SPRING_SESSION.match(key)
        if m and not key.endswith(":expires"):
            return _spring(rec, m["ns"], m["id"])
    if rec.type == "string":
        container = coordscope.parse_container_session(key)
        if container is not None:
            # one blob only its container reads: opaque by design, its size is all there is
            why = "truncated" if rec.truncated else "opaque"
            return SessionFact(container, "container", None, group=key[: -len(container) - 1],
                               encoding=f"{why} container blob, {rec.size} bytes")  # fmt: skip
        m = SPRING_SHADOW.match(key)
        if m:
            return SessionShadowFact(session_id=m["id"], group=m["ns"])
        if any(fnmatch.fnmatchcase(key, p) for p in json_patterns) and rec.value is not None:
            return _json_session(rec)
    if rec.type == "set":
        m = SPRING_AUX.match(key)
        if m and ("spring" in m["ns"] or m["role"] == "expirations" or PRINCIPAL in key):
            return AuxiliaryFact(library="spring-session", role=m["role"])
    return None


def _spring(rec: KeyRecord, namespace: str, session_id: str) -> SessionFact:
    values = {display(k): javaser.decode(v) for k, v in rec.fields.items()}
    attributes = {
        name[len(ATTR_PREFIX) :]: as_text(value)
        for name, value in values.items()
        if name.startswith(ATTR_PREFIX)
    }
    # the principal attribute is the user (kept for Spring's index): it is shown as the user
    user = attributes.pop(PRINCIPAL, None) or user_of(attributes)
    return SessionFact(
        session_id=session_id,
        layout="spring-session",
        user=user,
        attributes=attributes,
        created_ms=_int(values.get("creationTime")),
        last_access_ms=_int(values.get("lastAccessedTime")),
        max_inactive_s=_int(values.get("maxInactiveInterval")),
        group=namespace,
    )


def _json_session(rec: KeyRecord) -> Fact | None:
    assert rec.value is not None
    try:
        data = json.loads(rec.value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cookie"), dict):
        return None  # not express-session's: the session_stores rules take it
    prefix, _, session_id = rec.key.partition(":")
    attributes = {str(k): as_text(v) for k, v in data.items() if k != "cookie"}
    user = user_of(attributes)
    passport = data.get("passport")
    if user is None and isinstance(passport, dict) and passport.get("user") is not None:
        user = as_text(passport["user"])
    return SessionFact(
        session_id=session_id or rec.key,
        layout="connect-redis",
        user=user,
        attributes=attributes,
        group=prefix,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
