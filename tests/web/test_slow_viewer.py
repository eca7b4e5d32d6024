"""A viewer that stops reading, against a real uvicorn: it is dropped, the others never wait."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
import websockets.sync.client

from app.cluster import ClusterInfo
from app.core import Core
from app.web import socket as ws_socket
from tests.conftest import redis_client, serving, settings_for


@pytest.fixture
def web(cluster: ClusterInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(ws_socket, "SEND_TIMEOUT_S", 1.5)
    with serving(Core(settings_for(cluster))) as url:
        yield url.removeprefix("http://")


def _get(url: str, path: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=2) as r:
            body: dict[str, object] = json.load(r)
            return body
    except OSError:
        return None


def _silent_viewer(url: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    host, port = url.split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {url}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return s


def _send_buffer_max() -> int:
    """The kernel's ceiling for a TCP send buffer (autotuning grows it that far), 4 MiB if unknown."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return max(int(f.read().split()[-1]), 4 << 20)
    except (OSError, ValueError, IndexError):
        return 4 << 20


def test_a_viewer_that_stops_reading_is_dropped_and_costs_the_others_nothing(
    web: str, cluster: ClusterInfo
) -> None:
    silent = _silent_viewer(web)
    r = redis_client(cluster)
    seen: list[str] = []
    budget = 2 * _send_buffer_max() + (4 << 20)
    with websockets.sync.client.connect(f"ws://{web}/ws?batch=1", max_size=None) as live:
        assert json.loads(live.recv(timeout=10))["type"] == "snapshot"
        # Lock changes until the silent viewer's socket buffers are full, however large the
        # kernel lets them grow: twice its send-buffer ceiling, in what the reading viewer got.
        name = "slow:" + "n" * 300 + ":lock:"
        deadline = time.monotonic() + 90
        dropped = False
        round_ = 0
        received = 0
        while not dropped and time.monotonic() < deadline:
            if received < budget:  # once past the budget the silent viewer is surely stalled: stop writing
                r.mset({f"{name}{round_}:{i}": f"{round_:032d}" for i in range(400)})
                round_ += 1
            end = time.monotonic() + 0.25
            while time.monotonic() < end:  # the reading viewer keeps up meanwhile
                try:
                    text = live.recv(timeout=0.25)
                except TimeoutError:
                    continue
                received += len(text)
                message = json.loads(text)
                if message["type"] == "batch":
                    seen += [e["lock"]["name"] for e in message["events"] if e["type"] == "lock.upserted"]
            state = _get(web, "/api/state")
            log = state["log"] if state else []
            dropped = any("read nothing for" in line["text"] for line in log)  # type: ignore[index,union-attr]
        assert dropped, f"the silent viewer was never disconnected ({received} bytes in {round_} rounds)"
        last = f"{name}{round_ - 1}:399"
        end = time.monotonic() + 10
        while last not in seen and time.monotonic() < end:  # the reading viewer gets every change
            message = json.loads(live.recv(timeout=10))
            if message["type"] == "batch":
                seen += [e["lock"]["name"] for e in message["events"] if e["type"] == "lock.upserted"]
        assert last in seen
    silent.close()
