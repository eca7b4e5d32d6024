"""``coordscope replay --web`` through Starlette's TestClient: /api/replay, /ws and the
read-only API, on the committed recording (no servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.config import Settings
from app.core import Core
from app.replay import Replay
from app.web import create_app
from collectors.recording import read_recording

FIXTURE = Path(__file__).parent.parent / "fixtures" / "lock-redis.jsonl"


def nowhere(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path, redis=(), zookeeper=())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    replay = Replay(read_recording(FIXTURE), playing=False)
    with TestClient(create_app(Core(nowhere(tmp_path), replay))) as c:
        yield c


def holders(state: dict[str, Any]) -> list[str | None]:
    return [lock["holder"] for lock in state["locks"]]


def test_get_replay_says_where_the_playhead_is(client: TestClient) -> None:
    st = client.get("/api/replay").json()
    rec = read_recording(FIXTURE)
    assert st["mode"] == "replay" and st["state"] == "paused" and st["speed"] == 1
    assert (st["start_ms"], st["end_ms"], st["position_ms"]) == (rec.start_ms, rec.end_ms, rec.start_ms)
    assert st["duration_ms"] == rec.end_ms - rec.start_ms and st["elapsed_ms"] == 0
    assert st["keyframes"][0] == rec.start_ms and len(st["keyframes"]) == len(rec.keyframes)
    assert st["file"].endswith("lock-redis.jsonl") and 0.25 in st["speeds"] and 16 in st["speeds"]


def test_seek_play_pause_and_speed(client: TestClient) -> None:
    start = client.get("/api/replay").json()["start_ms"]
    st = client.post("/api/replay", json={"action": "seek", "at_ms": start + 2500}).json()
    assert st["position_ms"] == start + 2500 and st["state"] == "paused"
    assert holders(client.get("/api/state").json()) == ["client-2"]
    st = client.post("/api/replay", json={"action": "play", "speed": 0.25}).json()
    assert st["state"] == "playing" and st["speed"] == 0.25
    st = client.post("/api/replay", json={"action": "pause"}).json()
    assert st["state"] == "paused" and start + 2500 <= st["position_ms"] < start + 3000
    assert client.post("/api/replay", json={"speed": 16}).json()["speed"] == 16
    st = client.post("/api/replay", json={"action": "seek", "at_ms": 0}).json()
    assert st["position_ms"] == start, "a seek is clamped to the recording"
    assert holders(client.get("/api/state").json()) == []


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"action": "rewind"}, 400, "unknown action"),
        ({"action": "seek"}, 400, "needs 'at_ms'"),
        ({"action": "seek", "at_ms": "soon"}, 400, "needs 'at_ms'"),
        ({"speed": 100}, 400, "'speed' must be"),
        ({"speed": True}, 400, "'speed' must be"),
        ({}, 400, "send an 'action'"),
        ({"action": "play", "loop": True}, 400, "unknown field"),
        ([1], 400, "JSON object"),
    ],
)
def test_bad_replay_requests_are_named(client: TestClient, body: Any, status: int, says: str) -> None:
    resp = client.post("/api/replay", json=body)
    assert resp.status_code == status and says in resp.json()["error"]


def test_a_replay_is_read_only(client: TestClient) -> None:
    assert client.get("/api/scenarios").json() == []
    resp = client.post("/api/runs", json={"scenario": "lock-redis"})
    assert resp.status_code == 409 and "replay: read-only" in resp.json()["error"]
    run_id = client.get("/api/runs").json()
    for url, body in (("/api/runs/x/faults", {"fault": "pause-holder"}), ("/api/runs/x/stop", {})):
        resp = client.post(url, json=body)
        assert resp.status_code == 409 and "read-only" in resp.json()["error"], (url, run_id)


def test_the_websocket_gets_a_snapshot_of_each_moment_sought(client: TestClient) -> None:
    start = client.get("/api/replay").json()["start_ms"]
    with client.websocket_connect("/ws") as ws, client.websocket_connect("/ws") as other:
        for socket in (ws, other):
            first = socket.receive_json()
            assert first["type"] == "snapshot" and first["at_ms"] == start and first["locks"] == []
        client.post("/api/replay", json={"action": "seek", "at_ms": start + 3400})
        for socket in (ws, other):  # every viewer: one playhead
            snap = socket.receive_json()
            assert snap["type"] == "snapshot" and snap["at_ms"] == start + 3400
            assert holders(snap) == ["client-3"]
            (cells,) = snap["rows"]["lock"].values()  # the rows are drawn by today's families
            assert any("client-3" in str(cell) for cell in cells)
        client.post("/api/replay", json={"action": "seek", "at_ms": start + 3600})  # a step: events
        event = ws.receive_json()
        assert event["type"] != "snapshot" and event["seq"] > snap["seq"]


def test_a_live_server_says_so_and_refuses_replay_commands(tmp_path: Path) -> None:
    with TestClient(create_app(Core(nowhere(tmp_path)))) as c:
        assert c.get("/api/replay").json() == {"mode": "live"}
        resp = c.post("/api/replay", json={"action": "pause"})
        assert resp.status_code == 409 and "live" in resp.json()["error"]
