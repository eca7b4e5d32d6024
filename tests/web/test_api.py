"""The web API and websocket through Starlette's TestClient, on the real cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.cluster import ClusterInfo
from app.core import Core
from app.web import create_app
from tests.conftest import redis_client, settings_for

FAST = {"rounds": "3", "hold_ms": "60", "ttl_ms": "600", "poll_ms": "20"}


@pytest.fixture
def client(cluster: ClusterInfo) -> Iterator[TestClient]:
    with TestClient(create_app(Core(settings_for(cluster)))) as c:
        yield c


def poll(client: TestClient, url: str, done: Any, timeout: float = 20) -> dict[str, Any]:
    """GET ``url`` until ``done(json)``; the server does the work, we only look."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(url).json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never satisfied the condition: {body}")
        time.sleep(0.05)


def test_state_has_the_documented_shape(client: TestClient, cluster: ClusterInfo) -> None:
    r = redis_client(cluster)
    lock = r.lock("acct:42:lock", timeout=30)
    assert lock.acquire(blocking=False)
    state = poll(client, "/api/state", lambda s: any(lk["name"] == "acct:42:lock" for lk in s["locks"]))
    assert set(state) >= {"locks", "sessions", "marks", "transactions", "nodes", "runs"}
    (found,) = [lk for lk in state["locks"] if lk["name"] == "acct:42:lock"]
    assert found["store"] == "redis" and found["layout"] == "redis-py"
    assert found["holder"] == found["token"] == lock.local.token.decode()
    assert 0 < found["ttl_ms"] <= 30000 and found["waiters"] == []
    lock.release()
    poll(client, "/api/state", lambda s: not s["locks"])


def test_scenarios_catalogue(client: TestClient) -> None:
    catalogue = client.get("/api/scenarios").json()
    (lock_redis,) = [s for s in catalogue if s["name"] == "lock-redis"]
    assert lock_redis["variants"]["release"] == ["lua", "del"]
    assert {f["name"] for f in lock_redis["faults"]} == {"pause-holder", "kill-holder", "kill-node"}
    assert {p["name"] for p in lock_redis["params"]} >= {"clients", "ttl_ms", "fencing"}


def test_a_run_from_start_to_verdict(client: TestClient) -> None:
    resp = client.post(
        "/api/runs",
        json={"scenario": "lock-redis", "params": {**FAST, "fencing": "off"}, "faults": ["pause-holder"]},
    )
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    running = client.get(f"/api/runs/{run_id}")
    assert running.status_code == 200 and running.json()["scenario"] == "lock-redis"
    done = poll(client, f"/api/runs/{run_id}", lambda r: r["status"] != "running")
    assert done["status"] == "violated"
    assert done["verdict"]["holds"] is False and len(done["verdict"]["actors"]) == 2
    assert done["lanes"] and done["params"]["fencing"] == "off"
    assert client.post(f"/api/runs/{run_id}/faults", json={"fault": "pause-holder"}).status_code == 409


def test_a_fault_posted_while_running(client: TestClient) -> None:
    run_id = client.post(
        "/api/runs", json={"scenario": "lock-redis", "params": {**FAST, "rounds": "8", "fencing": "off"}}
    ).json()["id"]
    bad = client.post(f"/api/runs/{run_id}/faults", json={"fault": "boom"})
    assert bad.status_code == 400 and "has no fault 'boom'" in bad.json()["error"]
    ok = client.post(f"/api/runs/{run_id}/faults", json={"fault": "pause-holder"})
    assert ok.status_code == 202, ok.text
    done = poll(client, f"/api/runs/{run_id}", lambda r: r["status"] != "running")
    assert done["status"] == "violated"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"scenario": "nope"}, 404, "unknown scenario 'nope'"),
        ({}, 400, "missing 'scenario'"),
        ({"scenario": "lock-redis", "params": {"fencing": "maybe"}}, 400, "fencing must be one of"),
        ({"scenario": "lock-redis", "params": {"clients": 1}}, 400, "clients must be at least 2"),
        ({"scenario": "lock-redis", "faults": ["boom"]}, 400, "has no fault 'boom'"),
        ({"scenario": "lock-redis", "faults": "pause-holder"}, 400, "'faults' must be a list"),
        ({"scenario": "lock-redis", "extra": 1}, 400, "unknown field(s) extra"),
    ],
)
def test_bad_run_requests(client: TestClient, body: dict[str, Any], status: int, message: str) -> None:
    resp = client.post("/api/runs", json=body)
    assert resp.status_code == status and message in resp.json()["error"]


def test_malformed_requests(client: TestClient) -> None:
    assert client.post("/api/runs", content=b"{").status_code == 415
    resp = client.post("/api/runs", content=b"{", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    resp = client.post("/api/runs", content=b"[1]", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]
    resp = client.post("/api/runs", content=b"x" * 70000, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert client.get("/api/runs/nope").status_code == 404
    assert client.post("/api/runs/nope/faults", json={"fault": "x"}).status_code == 404
    assert client.get("/nothing").json() == {"error": "no such path: /nothing"}
    assert client.delete("/api/state").status_code == 405
    cross = client.post(
        "/api/runs", json={"scenario": "lock-redis"}, headers={"origin": "http://evil.example"}
    )
    assert cross.status_code == 403


def next_of(ws: Any, kind: str) -> dict[str, Any]:
    """The next message of this type (events keep flowing in between)."""
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] == kind:
            return message


def test_websocket_snapshot_first_then_events(client: TestClient, cluster: ClusterInfo) -> None:
    with client.websocket_connect("/ws") as ws:
        first = ws.receive_json()
        assert first["type"] == "snapshot" and first["v"] == 1 and "locks" in first
        redis_client(cluster).set("ws:lock", "0" * 32, px=30000)
        while next_of(ws, "lock.upserted")["lock"]["name"] != "ws:lock":
            pass
        ws.send_text("not json")
        assert "not JSON" in next_of(ws, "error")["message"]
        ws.send_json({"type": "launch-missiles"})
        assert "unknown message type" in next_of(ws, "error")["message"]
        ws.send_bytes(b"\x00\x01")
        assert "binary" in next_of(ws, "error")["message"]
        ws.send_json({"type": "ping"})
        next_of(ws, "pong")  # the connection survived all of it
        ws.send_json({"type": "resync"})
        assert next_of(ws, "snapshot")["v"] == 1


def test_websocket_refuses_other_origins(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws,
    ):
        ws.receive_json()


def test_off_loopback_changes_need_the_token(cluster: ClusterInfo) -> None:
    app = create_app(Core(settings_for(cluster)), token="s3cret")
    with TestClient(app) as c:
        assert c.get("/api/state").status_code == 200  # reading needs no token
        denied = c.post("/api/runs", json={"scenario": "lock-redis", "params": FAST})
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        wrong = c.post("/api/runs", json={"scenario": "lock-redis"}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post(
            "/api/runs",
            json={"scenario": "lock-redis", "params": FAST},
            headers={"authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 201
        poll(c, f"/api/runs/{ok.json()['id']}", lambda r: r["status"] != "running")


def test_the_page_is_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "coordscope" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_state_is_a_page_of_each_kind_with_totals_and_pages_on(
    client: TestClient, cluster: ClusterInfo
) -> None:
    r = redis_client(cluster)
    r.mset({f"page:item:{i:04d}": "x" for i in range(340)})
    state = poll(client, "/api/state", lambda s: s["totals"]["keys"] >= 340)
    assert len(state["keys"]) == 300  # the websocket's page; the rest is one request away
    rest = client.get("/api/state?kind=key&offset=300&limit=300").json()
    assert set(rest) >= {"keys", "totals", "rows"} and "locks" not in rest
    assert len(rest["keys"]) == rest["totals"]["keys"] - 300
    assert set(rest["rows"]["key"]) == {k["id"] for k in rest["keys"]}
    assert not {k["id"] for k in rest["keys"]} & {k["id"] for k in state["keys"]}
    for bad in ("kind=nope", "offset=-1", "limit=0", "limit=many", "limit=999999"):
        answer = client.get(f"/api/state?{bad}")
        assert answer.status_code == 400 and answer.json()["error"]


def test_websocket_batches_carry_the_events_and_the_totals(client: TestClient, cluster: ClusterInfo) -> None:
    with client.websocket_connect("/ws?batch=1") as ws:
        assert ws.receive_json()["type"] == "snapshot"
        redis_client(cluster).set("batch:lock", "0" * 32, px=30000)
        while True:
            batch = next_of(ws, "batch")
            locks = [e["lock"] for e in batch["events"] if e["type"] == "lock.upserted"]
            if any(lk["name"] == "batch:lock" for lk in locks):
                break
        assert batch["v"] == 1 and batch["totals"]["locks"] >= 1
