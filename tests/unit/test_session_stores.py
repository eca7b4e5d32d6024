"""Python session stores' keys, as the real libraries wrote them, and hostile pickles.

The byte strings were copied from ``python -m tests.tools.capture_sessions <port>``
(Flask-Session 0.8.0 with msgspec 0.22, starsessions 2.2.1, redis-py 8.1).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from collectors.families import recognise_key
from collectors.layouts import LayoutConfig, safepickle
from collectors.layouts.facts import LockFact, SessionFact
from tests.unit.test_layouts import hash_, string

FLASK_KEY = "session:0QNk2ufwPzSmtum2rMLO50iFATHG-gzRT77kinZ99PU"
FLASK_VALUE = b"\x84\xaa_permanent\xc3\xa4user\xa5alice\xa4cart\x92\xa5sku-1\xa5sku-2\xa6visits\x01"
STAR_KEY = "starsessions.1210fe1981becb8b2db95d563bbf758b"
STAR_VALUE = (
    b'{"user": "alice", "cart": ["sku-1", "sku-2"], "visits": 1, "__metadata__": {"lifetime": 3600, '
    b'"created": 1795916338.4216318, "last_access": 1795916338.421633}}'
)
ATTRIBUTES = {"user": "alice", "cart": '["sku-1", "sku-2"]', "visits": "1"}


def session(rec_fact: object) -> SessionFact:
    assert isinstance(rec_fact, SessionFact), rec_fact
    return rec_fact


def test_flask_session_msgpack() -> None:
    fact = session(recognise_key(string(FLASK_KEY, FLASK_VALUE, ttl=3599_998)))
    assert (fact.layout, fact.group, fact.encoding) == ("flask-session", "session", "msgpack")
    assert fact.session_id == "0QNk2ufwPzSmtum2rMLO50iFATHG-gzRT77kinZ99PU"
    assert (fact.user, fact.attributes) == ("alice", ATTRIBUTES)


def test_flask_session_older_pickle_is_read_without_unpickling() -> None:
    value = pickle.dumps({"_permanent": True, "user": "alice", "cart": ["sku-1", "sku-2"], "visits": 1})
    fact = session(recognise_key(string(FLASK_KEY, value, ttl=None)))
    assert (fact.layout, fact.encoding, fact.user, fact.attributes) == (
        "flask-session",
        "pickle",
        "alice",
        ATTRIBUTES,
    )


def test_starsessions_json_with_metadata() -> None:
    fact = session(recognise_key(string(STAR_KEY, STAR_VALUE, ttl=3598_999)))
    assert (fact.layout, fact.group, fact.encoding) == ("starsessions", "starsessions", "json")
    assert fact.session_id == "1210fe1981becb8b2db95d563bbf758b"
    assert (fact.user, fact.attributes) == ("alice", ATTRIBUTES)
    assert (fact.created_ms, fact.last_access_ms, fact.max_inactive_s) == (1795916338421, 1795916338421, 3600)


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {Boom.marker}",))

    marker = ""


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_that_calls_something_is_opaque_and_never_run(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "ran"
    Boom.marker = str(marker)
    value = pickle.dumps({"user": "mallory", "x": Boom()}, protocol=protocol)
    assert b"system" in value  # the hostile opcodes are there
    assert safepickle.decode(value) is None
    for key in (FLASK_KEY, "myapp:session:abc"):
        fact = session(recognise_key(string(key, value, ttl=60_000)))
        assert fact.user is None and fact.attributes == {}
        assert fact.encoding == f"opaque, {len(value)} bytes"
    assert not marker.exists()


def test_safepickle_plain_values() -> None:
    shared = [1, 2]
    value = {"a": shared, "b": shared, "t": (1, "x"), "n": None, "f": 1.5, "big": 2**80, "by": b"\xff"}
    for protocol in (3, 4, 5):  # protocol 2 pickles bytes as a call to _codecs.encode
        assert safepickle.decode(pickle.dumps(value, protocol=protocol)) == {
            "a": [1, 2],
            "b": [1, 2],
            "t": [1, "x"],
            "n": None,
            "f": 1.5,
            "big": 2**80,
            "by": "\\xff",
        }
    assert safepickle.decode(pickle.dumps(value, protocol=2)) is None
    assert safepickle.decode(pickle.dumps({"u": "a"}, protocol=2)) == {"u": "a"}
    assert safepickle.decode(b"\x80\x04garbage") is None


def test_by_name_needs_a_session_segment_and_a_ttl() -> None:
    body = b'{"user_id": 42, "theme": "dark"}'
    fact = session(recognise_key(string("shop:sessions:abc123", body, ttl=60_000)))
    assert (fact.layout, fact.group, fact.session_id, fact.user) == (
        "by-name",
        "shop:sessions",
        "abc123",
        "42",
    )
    fact = session(recognise_key(string("app.user_session.9", body, ttl=60_000)))
    assert (fact.group, fact.session_id) == ("app.user_session", "9")
    fact = session(recognise_key(hash_("api:sess:k1", {b"username": b"bob", b"n": b"3"}, ttl=60_000)))
    assert (fact.encoding, fact.user, fact.attributes) == ("hash", "bob", {"username": "bob", "n": "3"})
    opaque = session(recognise_key(string("web:session:zz", b"\x00\x01binary", ttl=60_000)))
    assert opaque.encoding == "opaque, 8 bytes"
    for key, ttl in (("shop:sessions:abc123", None), ("possession:x", 60_000), ("sessionless:y", 60_000)):
        assert not isinstance(recognise_key(string(key, body, ttl=ttl)), SessionFact), key


def test_by_name_leaves_locks_and_our_own_keys_alone() -> None:
    token = "93ec698ee95a11f1900002fc00000001"
    assert isinstance(recognise_key(string("session:lock:abc", token, ttl=5000)), LockFact)
    assert not isinstance(
        recognise_key(string("coordscope:session:x", b'{"user": "a"}', ttl=5000)), SessionFact
    )


def test_configured_patterns_take_any_value_and_no_ttl() -> None:
    config = LayoutConfig(session_patterns=("sess:*", "auth/tokens/*"))
    fact = session(recognise_key(string("auth/tokens/t-1", b'{"login": "carol"}', ttl=None), config))
    assert (fact.layout, fact.group, fact.session_id, fact.user) == (
        "by-pattern",
        "auth/tokens",
        "t-1",
        "carol",
    )
    assert recognise_key(string("auth/tokens/t-1", b'{"login": "carol"}', ttl=None)) is None
