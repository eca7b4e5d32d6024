"""HAProxy as a run starts it: round robin over instances, a dead one routed around
after its health checks fail, cookie stickiness, the servers as its stats say."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import pytest

from collectors.targets import free_port
from scenarios.kit.balancer import Backend, Balancer, BalancerError, config, parse_stat


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Instance:
    """A tiny app on a loopback port that answers every request with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), _App)
        self.server.name = name  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def backend(self) -> Backend:
        return Backend(self.name, "127.0.0.1", self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    apps = [Instance(f"app-{i}") for i in (1, 2, 3)]
    yield apps
    for app in apps:
        with_stop = app.thread.is_alive()
        if with_stop:
            app.stop()


async def served(url: str, n: int, cookies: httpx.Cookies | None = None) -> list[str]:
    async with httpx.AsyncClient(cookies=cookies) as client:
        return [(await client.get(url)).text for _ in range(n)]


async def test_round_robin_routes_around_a_dead_instance(tmp_path: Path, instances: list[Instance]) -> None:
    lb = Balancer(tmp_path, free_port(), [a.backend for a in instances], check_ms=100)
    await lb.start()
    try:
        url = f"http://{lb.address}/"
        first = await served(url, 6)
        assert sorted(set(first)) == ["app-1", "app-2", "app-3"]
        assert first[:3] != first[3:] or len(set(first[:3])) == 3  # each in turn
        states = {s.name: s.status for s in await lb.servers()}
        assert set(states) == {"app-1", "app-2", "app-3"} and all(v.startswith("UP") for v in states.values())
        instances[1].stop()
        for _ in range(100):  # two failed checks, 100 ms apart
            if {s.name: s.status for s in await lb.servers()}["app-2"].startswith("DOWN"):
                break
            await asyncio.sleep(0.05)
        assert {s.name: s.status for s in await lb.servers()}["app-2"].startswith("DOWN")
        assert set(await served(url, 6)) == {"app-1", "app-3"}
    finally:
        await lb.stop()
    assert lb.proc is not None and lb.proc.returncode is not None


async def test_sticky_cookie_keeps_a_client_on_its_instance(
    tmp_path: Path, instances: list[Instance]
) -> None:
    lb = Balancer(tmp_path, free_port(), [a.backend for a in instances], sticky=True, check_ms=100)
    await lb.start()
    try:
        url = f"http://{lb.address}/"
        async with httpx.AsyncClient() as client:
            first = (await client.get(url)).text
            assert client.cookies.get("SERVERID") == first
            assert {(await client.get(url)).text for _ in range(5)} == {first}
    finally:
        await lb.stop()


async def test_a_refused_start_says_why_in_one_line(tmp_path: Path, instances: list[Instance]) -> None:
    taken = instances[0].backend.port  # HAProxy cannot bind a port in use
    lb = Balancer(tmp_path, taken, [instances[1].backend])
    with pytest.raises(BalancerError, match=r"did not start on 127\.0\.0\.1"):
        await lb.start()
    assert lb.proc is not None and lb.proc.returncode is not None


def test_config_and_stats_parsing() -> None:
    cfg = config(8080, [Backend("app-1", "127.0.0.1", 9001)], "/tmp/x.sock", sticky=True, check_ms=250)
    assert "bind 127.0.0.1:8080" in cfg and "balance roundrobin" in cfg
    assert "server app-1 127.0.0.1:9001 check cookie app-1" in cfg and "inter 250ms" in cfg
    with pytest.raises(ValueError, match="letters, digits"):
        config(1, [Backend("a b\nserver evil", "h", 1)], "/s")
    csv = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
        "wredis,status\n"
        "web,FRONTEND,,,0,1,512,7,0,0,0,0,0,,,,,OPEN\n"
        "apps,app-1,0,0,0,1,,4,0,0,,0,,0,0,0,0,UP\n"
        "apps,app-2,0,0,0,1,,3,0,0,,0,,0,0,0,0,DOWN\n"
        "apps,BACKEND,0,0,0,1,52,7,0,0,0,,0,0,0,0,0,UP\n"
    )
    assert [(s.name, s.status, s.sessions) for s in parse_stat(csv)] == [
        ("app-1", "UP", 4),
        ("app-2", "DOWN", 3),
    ]
    assert parse_stat("garbage") == [] and parse_stat("") == []
