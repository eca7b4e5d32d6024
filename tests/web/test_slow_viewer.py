"""A viewer that stops reading, against a real uvicorn: it is dropped, the others never wait."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
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


def _drained_to_the_end(s: socket.socket, within_s: float) -> bool:
    """Read ``s`` until the server closes it (True), or ``within_s`` ends with it open."""
    s.settimeout(0.5)
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            if not s.recv(1 << 16):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_a_viewer_that_stops_reading_is_dropped_and_costs_the_others_nothing(
    web: str, cluster: ClusterInfo
) -> None:
    silent = _silent_viewer(web)
    r = redis_client(cluster)
    seen: list[str] = []
    budget = 2 * _send_buffer_max() + (4 << 20)
    with websockets.sync.client.connect(f"ws://{web}/ws?batch=1", max_size=None) as live:
        assert json.loads(live.recv(timeout=10))["type"] == "snapshot"
        dropped = False

        def read(for_s: float) -> int:
            """What the reading viewer gets meanwhile: lock changes, and the log line that says
            the silent one was dropped (each change logs a line too, so the server's last 300
            lines of log may have moved past it by the time anyone asks: it is read as it comes)."""
            nonlocal dropped
            got, end = 0, time.monotonic() + for_s
            while time.monotonic() < end:
                try:
                    text = live.recv(timeout=0.25)
                except TimeoutError:
                    continue
                got += len(text)
                message = json.loads(text)
                events = message["events"] if message["type"] == "batch" else []
                seen.extend(e["lock"]["name"] for e in events if e["type"] == "lock.upserted")
                logged = [e["text"] for e in events if e["type"] == "log"] + [
                    line["text"] for line in message.get("log", [])
                ]
                dropped = dropped or any("read nothing for" in line for line in logged)
            return got

        # Lock changes until the silent viewer's socket buffers are full, however large the
        # kernel lets them grow (twice its send-buffer ceiling, in what the reading viewer got),
        # then none, until the server gives up on it.
        name = "slow:" + "n" * 300 + ":lock:"
        deadline = time.monotonic() + 60
        round_ = received = 0
        while not dropped and time.monotonic() < deadline:
            if received < budget:
                r.mset({f"{name}{round_}:{i}": f"{round_:032d}" for i in range(400)})
                round_ += 1
            received += read(0.25)
        assert dropped, f"the silent viewer was never disconnected ({received} bytes in {round_} rounds)"
        last = f"{name}{round_ - 1}:399"
        end = time.monotonic() + 10
        while last not in seen and time.monotonic() < end:  # the reading viewer gets every change
            read(0.25)
        assert last in seen
    # and the server did close it: what it had sent, then the end of the stream
    assert _drained_to_the_end(silent, 20), "the dropped viewer's connection is still open"
    silent.close()
