"""Idempotency marks alone: the exact bytes real libraries wrote, the generic rule, config
patterns, and garbage. Every value below was read back from Redis by
``tests/tools/capture_marks.py`` (Powertools for AWS Lambda Python 3.37.0 and
TypeScript 2.35.0; @node-idempotency/core 1.0.11 + storage-adapter-redis 1.0.2)."""

from __future__ import annotations

import json
import random

import pytest

from collectors.layouts.facts import AuxiliaryFact, MarkFact
from collectors.layouts.idempotency import (
    COMPLETED,
    EXPIRED,
    FAILED,
    IN_PROGRESS,
    SET,
    auxiliary,
    recognise,
)
from collectors.records import KeyRecord

READ_AT = 1795892570_200
"""When the records below were read (ms): after the in-progress writes, before any expiry."""


def string(key: str | bytes, value: bytes, ttl: int | None = 3_600_000, read_at: int = READ_AT) -> KeyRecord:
    raw = key.encode() if isinstance(key, str) else key
    return KeyRecord(
        node="redis-1",
        raw_key=raw,
        type="string",
        ttl_ms=ttl,
        read_at_ms=read_at,
        value=value,
        size=len(value),
    )


def hash_(key: str, fields: dict[bytes, bytes], ttl: int | None = 30_000) -> KeyRecord:
    return KeyRecord(
        node="redis-1",
        raw_key=key.encode(),
        type="hash",
        ttl_ms=ttl,
        read_at_ms=READ_AT,
        fields=fields,
        size=len(fields),
    )


def other(key: str, kind: str, items: tuple[bytes, ...] = (b"IN_PROGRESS",)) -> KeyRecord:
    return KeyRecord(
        node="redis-1", raw_key=key.encode(), type=kind, ttl_ms=None, read_at_ms=READ_AT, items=items
    )


# ------------------------------------------------------------------ Powertools (Python and TypeScript)

PT_KEY = "test-func.__main__.charge#857c65e614ea5710f56c4227d5b5cc56"
PT_IN_PROGRESS = (
    b'{"status": "INPROGRESS", "expiration": 1795896170, "in_progress_expiration": 1795892600127}'
)
PT_COMPLETED = (
    b'{"data": "{\\"body\\": \\"{\\\\\\"payment_id\\\\\\": \\\\\\"pay-1\\\\\\", \\\\\\"message\\\\\\": '
    b'\\\\\\"success\\\\\\"}\\", \\"statusCode\\": 200}", "status": "COMPLETED", "expiration": 1795896170}'
)
PT_SHA_KEY = "payments-fn.__main__.charge#a1e3d94cc0ce36d7ee19075e3e997b926876ef259bf06a3f034f657fbf1aa44d"
PT_SHA_IN_PROGRESS = (
    b'{"status": "INPROGRESS", "expiration": 1795893170, "in_progress_expiration": 1795892600243, '
    b'"validation": "dfcafae694259c719203dd502252ab975bf6849dc6c8f5fcbe1eda19a821db4d"}'
)
PT_ORPHAN_KEY = "test-func.__main__.charge#026af196a8e85f5cc6387372a1d32822"
PT_ORPHAN = b'{"status": "INPROGRESS", "expiration": 1795896170, "in_progress_expiration": 1795892572148}'
TS_KEY = "payments-ts#y8vblI3ha/5+SagfkVAKsQ=="
TS_IN_PROGRESS = (
    b'{"status":"INPROGRESS","expiration":1795896207,"in_progress_expiration":1795892637306,'
    b'"validation":"5No7f7vOI0XXdysGdKMY1Q=="}'
)
TS_COMPLETED = (
    b'{"status":"COMPLETED","expiration":1795896208,"data":{"statusCode":200,'
    b'"body":"{\\"paymentId\\":\\"pay-1\\"}"}}'
)


def test_the_completed_bytes_are_what_powertools_serialises() -> None:
    """The escaping above is easy to get wrong: rebuild it the way the library does."""
    body = json.dumps({"payment_id": "pay-1", "message": "success"})
    data = json.dumps({"body": body, "statusCode": 200}, sort_keys=True)
    assert (
        json.dumps({"data": data, "status": "COMPLETED", "expiration": 1795896170}).encode() == PT_COMPLETED
    )


def test_powertools_in_progress_has_a_lease_and_an_expiry_but_no_owner() -> None:
    mark = recognise(string(PT_KEY, PT_IN_PROGRESS, ttl=3_599_990))
    assert mark == MarkFact(
        layout="powertools",
        state=IN_PROGRESS,
        lease_until_ms=1795892600127,
        expires_at_ms=1795896170_000,
        detail={"status": "INPROGRESS", "function": "test-func.__main__.charge"},
    )


def test_powertools_completed_shows_the_status_code_of_the_stored_result() -> None:
    mark = recognise(string(PT_KEY, PT_COMPLETED, ttl=3_600_000))
    assert mark is not None
    assert (mark.layout, mark.state, mark.response) == ("powertools", COMPLETED, "200")
    assert mark.lease_until_ms is None and mark.expires_at_ms == 1795896170_000
    assert mark.detail["status"] == "COMPLETED"


def test_powertools_payload_validation_hash_is_the_fingerprint() -> None:
    mark = recognise(string(PT_SHA_KEY, PT_SHA_IN_PROGRESS, ttl=599_989))
    assert mark is not None and mark.state == IN_PROGRESS
    assert mark.fingerprint == "dfcafae694259c719203dd502252ab975bf6849dc6c8f5fcbe1eda19a821db4d"
    assert mark.detail["function"] == "payments-fn.__main__.charge"


def test_powertools_key_prefix_names_the_function() -> None:
    value = b'{"status": "INPROGRESS", "expiration": 1795896170, "in_progress_expiration": 1795892600360}'
    mark = recognise(string("payments#49bb61f8ad2ea2b6e8523e7a59def713", value))
    assert mark is not None and mark.layout == "powertools" and mark.detail["function"] == "payments"


def test_powertools_typescript_writes_the_same_record_with_base64_hashes_and_object_data() -> None:
    running = recognise(string(TS_KEY, TS_IN_PROGRESS, ttl=3_599_697))
    assert running is not None and running.layout == "powertools" and running.state == IN_PROGRESS
    assert running.fingerprint == "5No7f7vOI0XXdysGdKMY1Q=="
    done = recognise(string(TS_KEY, TS_COMPLETED, ttl=3_600_999))
    assert done is not None and (done.state, done.response) == (COMPLETED, "200")


def test_powertools_orphan_stays_in_progress_with_its_lease_elapsed() -> None:
    """A killed invocation's record: still INPROGRESS, its in_progress_expiration passed."""
    mark = recognise(string(PT_ORPHAN_KEY, PT_ORPHAN, ttl=3_598_394, read_at=1795892573_800))
    assert mark is not None and mark.state == IN_PROGRESS
    assert mark.expires_at_ms is not None and mark.lease_until_ms == 1795892572148 < mark.expires_at_ms


def test_powertools_record_read_after_its_expiration_is_expired() -> None:
    mark = recognise(string(PT_KEY, PT_COMPLETED, ttl=5, read_at=1795896170_000))
    assert mark is not None and mark.state == EXPIRED and mark.detail["status"] == "COMPLETED"


def test_powertools_orphan_take_over_lock_is_an_auxiliary_key_not_a_mark() -> None:
    for value in (b"True", b"true"):  # Python, TypeScript
        rec = string(PT_ORPHAN_KEY + ":lock", value, ttl=9_989)
        assert recognise(rec) is None
        assert auxiliary(rec) == AuxiliaryFact(library="powertools", role="orphan take-over lock")
    assert auxiliary(string("orders:lock", b"True")) is None
    assert auxiliary(string(PT_KEY, PT_IN_PROGRESS)) is None


# ------------------------------------------------------------------ node-idempotency

NODE_KEY = "node-idempotency:POST:/charges:8e03978e-40d5-43e8-bc93-6894a57f9324"
NODE_FP = "4bd6f3396942d7e9a9bcd5e3bc7e3e514f3364e1d51dbd93fb3474db4cac1cd8"
NODE_IN_PROGRESS = b'{"status":"IN_PROGRESS","fingerPrint":"' + NODE_FP.encode() + b'"}'
NODE_COMPLETE = (
    b'{"status":"COMPLETE","fingerPrint":"' + NODE_FP.encode() + b'","response":{"additional":'
    b'{"statusCode":201},"body":{"id":"ch_3QkL9x","status":"succeeded","amount":1250}}}'
)
NODE_FAILED_KEY = "node-idempotency:POST:/charges:c0ffee00-0000-4000-8000-000000000042"
NODE_FAILED = (
    b'{"status":"COMPLETE","fingerPrint":"e93a26e71db22d7d50360a6fa04305bde4d3cac190ceb3a9250e9d7dd7920fa6",'
    b'"response":{"additional":{"statusCode":402},'
    b'"error":{"message":"card declined","code":"card_declined"}}}'
)


def test_node_idempotency_in_progress_with_fingerprint_and_the_parts_of_its_key() -> None:
    mark = recognise(string(NODE_KEY, NODE_IN_PROGRESS, ttl=86_399_998))
    assert mark == MarkFact(
        layout="node-idempotency",
        state=IN_PROGRESS,
        fingerprint=NODE_FP,
        detail={
            "status": "IN_PROGRESS",
            "method": "POST",
            "path": "/charges",
            "idempotency_key": "8e03978e-40d5-43e8-bc93-6894a57f9324",
        },
    )


def test_node_idempotency_complete_shows_the_stored_status_code() -> None:
    mark = recognise(string(NODE_KEY, NODE_COMPLETE, ttl=86_399_998))
    assert mark is not None
    assert (mark.state, mark.response, mark.fingerprint) == (COMPLETED, "201", NODE_FP)
    assert mark.detail["status"] == "COMPLETE" and "outcome" not in mark.detail


def test_node_idempotency_error_answer_is_a_completed_record_that_replays_the_error() -> None:
    mark = recognise(string(NODE_FAILED_KEY, NODE_FAILED, ttl=86_399_998))
    assert mark is not None
    assert (mark.state, mark.response, mark.detail["outcome"]) == (COMPLETED, "402", "error")


def test_node_idempotency_custom_prefix_without_body_or_fingerprint() -> None:
    key = "shop-idem:PUT:/orders/7:order-7-v2"
    running = recognise(string(key, b'{"status":"IN_PROGRESS"}', ttl=59_997))
    assert running is not None and running.layout == "node-idempotency" and running.fingerprint is None
    assert (running.detail["method"], running.detail["idempotency_key"]) == ("PUT", "order-7-v2")
    done = recognise(string(key, b'{"status":"COMPLETE","response":{"additional":{"statusCode":204}}}'))
    assert done is not None and (done.state, done.response) == (COMPLETED, "204")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (PT_KEY, PT_IN_PROGRESS),
        (PT_KEY, PT_COMPLETED),
        (PT_SHA_KEY, PT_SHA_IN_PROGRESS),
        (TS_KEY, TS_COMPLETED),
        (NODE_KEY, NODE_IN_PROGRESS),
        (NODE_KEY, NODE_COMPLETE),
        (NODE_FAILED_KEY, NODE_FAILED),
        # names the app chose that contain "lock": the lock recogniser's *lock* pattern claims these
        ("payments-fn.app.unlock_account#857c65e614ea5710f56c4227d5b5cc56", PT_IN_PROGRESS),
        ("blocklist-sync#857c65e614ea5710f56c4227d5b5cc56", PT_COMPLETED),
        ("node-idempotency:POST:/locks/7/release:k1", NODE_IN_PROGRESS),
    ],
)
def test_what_the_libraries_wrote_is_claimed_as_a_mark_even_when_named_like_a_lock(
    key: str, value: bytes
) -> None:
    """Marks are SET NX with a TTL, like locks: asked first, this recogniser must claim them all."""
    mark = recognise(string(key, value))
    assert mark is not None and mark.layout in ("powertools", "node-idempotency")


# ------------------------------------------------------------------ the generic rule


@pytest.mark.parametrize(
    ("spelling", "state"),
    [
        ("INPROGRESS", IN_PROGRESS),
        ("IN_PROGRESS", IN_PROGRESS),
        ("in-progress", IN_PROGRESS),
        ("In Progress", IN_PROGRESS),
        ("inProgress", IN_PROGRESS),
        ("PENDING", IN_PROGRESS),
        ("processing", IN_PROGRESS),
        ("started", IN_PROGRESS),
        ("COMPLETED", COMPLETED),
        ("COMPLETE", COMPLETED),
        ("done", COMPLETED),
        ("succeeded", COMPLETED),
        ("Success", COMPLETED),
        ("finished", COMPLETED),
        ("FAILED", FAILED),
        ("error", FAILED),
        ("expired", EXPIRED),
    ],
)
def test_generic_status_spellings(spelling: str, state: str) -> None:
    for rec in (
        hash_("idem:payments:o-7", {b"status": spelling.encode()}),
        string("orders:idempotency:o-7", json.dumps({"state": spelling}).encode()),
        string("dedup:o-7", spelling.encode()),
    ):
        mark = recognise(rec)
        assert mark is not None, rec.key
        assert (mark.layout, mark.state, mark.detail["status"]) == ("generic", state, spelling)


def test_generic_hash_reads_owner_fingerprint_lease_and_response() -> None:
    """The study note's layout: idem:{scope}:{key} hash with owner, fingerprint, lease, code."""
    running = recognise(
        hash_(
            "idem:checkout:order-7",
            {
                b"state": b"IN_PROGRESS",
                b"owner": b"worker-3",
                b"fingerprint": b"sha256:9f2c",
                b"lease_until": b"1795892600127",
                b"recovery_point": b"charge_created",
            },
        )
    )
    assert running == MarkFact(
        layout="generic",
        state=IN_PROGRESS,
        owner="worker-3",
        fingerprint="sha256:9f2c",
        lease_until_ms=1795892600127,
        detail={"status": "IN_PROGRESS", "recovery_point": "charge_created"},
    )
    done = recognise(
        hash_(
            "idem:checkout:order-7",
            {b"state": b"COMPLETED", b"code": b"201", b"body": b'{"charge": "ch_1"}' * 50},
        )
    )
    assert done is not None and (done.state, done.response) == (COMPLETED, "201")


def test_generic_json_response_without_code_is_a_short_preview() -> None:
    body = {"status": "done", "result": {"charge": "ch_1", "receipt": "r" * 500}, "expires_at": 1795896170}
    mark = recognise(string("api:idempotency-key:abc", json.dumps(body).encode()))
    assert mark is not None and mark.response is not None
    assert len(mark.response) <= 80 and mark.response.startswith('{"charge":"ch_1"')
    assert mark.expires_at_ms == 1795896170_000


@pytest.mark.parametrize(
    "key",
    [
        "idempotency:o-7",
        "svc:Idempotency-Key:o-7",
        "userIdempotencyKey:7",
        "idem:o-7",
        "IdemKey:o-7",
        "idem_keys/o-7",
        "dedup:o-7",
        "msg-dedupe:o-7",
        "de-dup:o-7",
        "request-id:o-7",
        "api:requestId:o-7",
        "request_id:o-7",
    ],
)
def test_generic_names(key: str) -> None:
    assert recognise(hash_(key, {b"status": b"done"})) is not None


@pytest.mark.parametrize(
    "key",
    [
        "ridematch:7",
        "video:7",
        "identity:7",
        "user:7:profile",
        "jobs:7",
        "request_identity:7",
        "subrequestid:7",
    ],
)
def test_names_that_do_not_say_idempotency(key: str) -> None:
    assert recognise(hash_(key, {b"status": b"done"})) is None


def test_generic_needs_a_status_it_can_read() -> None:
    assert recognise(hash_("idem:o-7", {b"owner": b"w1"})) is None
    assert recognise(hash_("idem:o-7", {b"status": b"paying"})) is None
    assert recognise(string("idem:o-7", b'{"status": 200}')) is None
    assert recognise(string("idem:o-7", b"1")) is None
    # a token under an idempotency name is not claimed here (the lock recogniser may call it a lock)
    assert recognise(string("idem:o-7", b"8799e082-e54e-43d9-99ae-bc6d3554a40f")) is None
    for kind in ("list", "set", "zset", "stream"):
        assert recognise(other("idem:o-7", kind)) is None


# ------------------------------------------------------------------ config patterns


def test_pattern_marks_without_idempotency_words() -> None:
    patterns = ("payments:once:*",)
    running = recognise(hash_("payments:once:o-7", {b"status": b"processing", b"owner": b"w2"}), patterns)
    assert running is not None and (running.layout, running.state, running.owner) == (
        "pattern",
        IN_PROGRESS,
        "w2",
    )
    flag = recognise(string("payments:once:o-8", b"1"), patterns)
    assert flag == MarkFact(layout="pattern", state=SET, detail={"value": "1"})
    odd = recognise(string("payments:once:o-9", b'{"status": "paying"}'), patterns)
    assert odd is not None and (odd.state, odd.detail["status"]) == (SET, "paying")
    assert recognise(other("payments:once:o-10", "set"), patterns) == MarkFact(layout="pattern", state=SET)
    assert recognise(string("payments:other:o-7", b"1"), patterns) is None


def test_library_layouts_win_over_patterns() -> None:
    mark = recognise(string(NODE_KEY, NODE_COMPLETE), ("node-idempotency:*",))
    assert mark is not None and mark.layout == "node-idempotency"


# ------------------------------------------------------------------ what is not a mark


def test_locks_sessions_and_random_json_are_not_marks() -> None:
    assert recognise(string("acct:42:lock", b"93ec698ee95a11f1900002fc00000001", ttl=30_000)) is None
    spring = {b"creationTime": b"\xac\xed\x00\x05sr\x00\x0ejava.lang.Long", b"maxInactiveInterval": b"x"}
    assert recognise(hash_("spring:session:sessions:0b4c9f1e-6d7e-4a7d-9a52-5b1a2b3c4d5e", spring)) is None
    cookie = b'{"cookie":{"originalMaxAge":1800000},"user":"alice","status":"done"}'
    assert recognise(string("sess:bRYsLHsqmU5KBDp0P4d-HgK6K2jAxaCu", cookie)) is None
    assert recognise(string("user:7:profile", b'{"status": "completed", "name": "alice"}')) is None
    # Powertools-looking JSON with fields Powertools never writes, under a plain name
    assert recognise(string("jobs:7", b'{"status": "COMPLETED", "expiration": 1, "owner": "w"}')) is None
    assert recognise(string("jobs:7", b'{"status": "IN_PROGRESS", "progress": 40}')) is None
    # coordscope's own marks belong to collectors.layouts.coordscope
    assert recognise(hash_("coordscope:mark:idem-7", {b"state": b"IN_PROGRESS"})) is None


# ------------------------------------------------------------------ hostile and broken input


@pytest.mark.parametrize(
    "name",
    ["<img src=x onerror=alert(1)>", "[bold red]markup[/]", "\x1b[31mansi\x1b[0m", "é" * 300],
)
def test_hostile_names_travel_verbatim_and_short(name: str) -> None:
    mark = recognise(string(f"node-idempotency:POST:/charges:{name}", NODE_IN_PROGRESS))
    assert mark is not None
    expected = name if len(name) <= 80 else name[:79] + "…"
    assert mark.detail["idempotency_key"] == expected
    generic = recognise(hash_(f"idem:{name}", {b"status": b"done", name.encode(): name.encode()}))
    assert generic is not None and all(len(k) <= 80 and len(v) <= 80 for k, v in generic.detail.items())


def test_non_utf8_keys_and_values() -> None:
    mark = recognise(string(b"idem:\xff\xfe", b"done"))
    assert mark is not None and mark.state == COMPLETED
    assert recognise(string(b"idem:\xff\xfe", b"\xff\xfe\xfd")) is None
    binary = recognise(hash_("idem:x", {b"\xffstatus": b"done", b"status": b"\xc3\x28"}))
    assert binary is None


DEEP = b'{"status": "INPROGRESS", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00" * 10,
        b"{",
        b"{}",
        b"[]",
        b"null",
        b'"INPROGRESS"',
        b"\xac\xed\x00\x05t\x00\x04done",
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x06status\x94\x8c\x04done\x94s.",  # pickle
        DEEP,
        b"{" * 50_000,
        b'{"status": null}',
        b'{"status": ["INPROGRESS"]}',
        b'{"status": {"INPROGRESS": 1}}',
        b'{"status": "INPROGRESS", "expiration": "soon"}',
        b'{"status": "INPROGRESS", "expiration": 1e400, "in_progress_expiration": NaN}',
        b'{"status": "INPROGRESS", "expiration": -Infinity, "in_progress_expiration": -5}',
        b'{"status": "INPROGRESS", "expiration": ' + b"9" * 4000 + b"}",
        b'{"status": "INPROGRESS", "expiration": 1' + b"0" * 5000 + b"}",  # past int's digit limit
        b'{"status": "COMPLETED", "expiration": true, "data": [1, {"statusCode": []}]}',
        b'{"status": "COMPLETE", "response": "x"}',
        b'{"status": "COMPLETE", "response": {"additional": [], "body": null}}',
        b'{"status": "COMPLETE", "fingerPrint": 7, "response": {"error": {}}}',
        b'{"status": "done", "expires_at": "0001-01-01T00:00:00+14:00", "lease_until": "9999-12-31"}',
        b'{"status": "done", "code": {"a": 1}, "owner": [1, 2], "fingerprint": {"x": '
        + b"[" * 500
        + b"]" * 500
        + b"}}",
        json.dumps({"status": "done", "body": "x" * 70_000, "k" * 1000: "v" * 1000}).encode(),
        json.dumps({f"f{i}": i for i in range(5000)} | {"state": "done"}).encode(),
        "\u202e\u0000done".encode(),
    ],
)
def test_garbage_never_raises(value: bytes) -> None:
    for key in (PT_KEY, NODE_KEY, "idem:x", "payments:once:x", PT_KEY + ":lock", "plain"):
        for rec in (string(key, value), hash_(key, {b"status": value, value[:100]: value})):
            mark = recognise(rec, ("payments:once:*",))
            auxiliary(rec)
            if mark is not None:
                assert mark.response is None or len(mark.response) <= 80
                assert all(len(v) <= 200 for v in mark.detail.values())


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20261128)
    kinds = ("string", "hash", "list", "set", "zset", "stream", "none", "weird")
    for _ in range(3000):
        blob = rng.randbytes(rng.randrange(0, 64))
        if rng.random() < 0.5:
            blob = b'{"status": "' + rng.choice([b"INPROGRESS", b"COMPLETE", b"done", b""]) + b'", ' + blob
        key = rng.choice([b"idem:", b"", PT_KEY.encode(), b"node-idempotency:POST:/a:"]) + rng.randbytes(8)
        rec = KeyRecord(
            node="n",
            raw_key=key,
            type=rng.choice(kinds),
            ttl_ms=rng.choice([None, -1, 0, 5000]),
            read_at_ms=rng.randrange(0, 2**41),
            value=rng.choice([None, blob]),
            fields={blob[:8]: blob, b"status": blob[8:]},
            items=(blob,),
            truncated=rng.random() < 0.2,
        )
        recognise(rec, ("*",) if rng.random() < 0.3 else ())
        auxiliary(rec)
