"""Sessions that Python web frameworks' Redis stores wrote show, and go when they go.

Flask-Session and starsessions run for real (their apps in
``tests/tools/capture_sessions.py``) against redis-1, driven through Flask's and
Starlette's test clients: a user logs in, the session shows with its user and
attributes; the user logs out (each library deletes the key) or the TTL runs out,
and the session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.cluster import ClusterInfo
from collectors.families.sessions import Session
from collectors.state import State
from tests.conftest import observing, redis_client, redis_port, until
from tests.tools.capture_sessions import flask_app, starlette_app

ATTRIBUTES = {"user": "alice", "cart": '["sku-1", "sku-2"]', "visits": "1"}


def sessions(st: State, layout: str) -> list[Session]:
    return [s for s in st.entities("session") if isinstance(s, Session) and s.layout == layout]


class Browser:
    """One user's browser on one of the apps (its cookie jar kept between requests)."""

    def __init__(self, layout: str, port: int, lifetime_s: int) -> None:
        if layout == "flask-session":
            self.client: Any = flask_app(port, lifetime_s).test_client()
        else:
            # one event loop for every request: the store's asyncio Redis client stays on it
            self.client = TestClient(starlette_app(port, lifetime_s)).__enter__()

    def close(self) -> None:
        if isinstance(self.client, TestClient):
            self.client.__exit__(None, None, None)

    def post(self, path: str) -> None:
        assert self.client.post(path).status_code == 200


async def browse(browser: Browser, path: str) -> None:
    await asyncio.to_thread(browser.post, path)


@contextlib.asynccontextmanager
async def browser_on(layout: str, port: int, lifetime_s: int) -> AsyncIterator[Browser]:
    browser = await asyncio.to_thread(Browser, layout, port, lifetime_s)
    try:
        yield browser
    finally:
        await asyncio.to_thread(browser.close)


LAYOUTS = pytest.mark.parametrize(
    ("layout", "pattern"),
    [("flask-session", "session:*"), ("starsessions", "starsessions.*")],
)


@LAYOUTS
async def test_login_shows_the_session_and_logout_removes_it(
    cluster: ClusterInfo, layout: str, pattern: str
) -> None:
    client = redis_client(cluster)
    async with observing(cluster) as bus, browser_on(layout, redis_port(cluster, "redis-1"), 3600) as browser:
        await browse(browser, "/login")
        (key,) = [k.decode() for k in client.scan_iter(match=pattern)]
        await until(bus, lambda st: len(sessions(st, layout)) == 1, f"the {layout} session")
        (found,) = sessions(bus.state, layout)
        assert (found.key, found.user, found.attributes, found.state) == (key, "alice", ATTRIBUTES, "live")
        assert found.ttl_ms is not None and 3_500_000 < found.ttl_ms <= 3_600_000
        assert found.encoding == ("msgpack" if layout == "flask-session" else "json")

        await browse(browser, "/logout")
        assert client.exists(key) == 0
        await until(bus, lambda st: sessions(st, layout) == [], f"the {layout} session gone")


@LAYOUTS
async def test_a_session_whose_ttl_runs_out_is_gone(cluster: ClusterInfo, layout: str, pattern: str) -> None:
    async with observing(cluster) as bus, browser_on(layout, redis_port(cluster, "redis-1"), 1) as browser:
        await browse(browser, "/login")
        await until(bus, lambda st: len(sessions(st, layout)) == 1, f"the {layout} session")
        gone: Callable[[State], bool] = lambda st: sessions(st, layout) == []  # noqa: E731
        await until(bus, gone, f"the {layout} session expired", timeout=10)
        assert any("expired" in line.text for line in bus.state.snapshot().log if "session" in line.text)
