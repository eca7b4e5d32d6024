"""Real Flask-Session and starsessions apps, logging a user in and out against a Redis.

The integration tests (tests/integration/test_foreign_sessions.py) drive these apps;
``python -m tests.tools.capture_sessions <port>`` logs a user in with each and prints
what each library wrote (key, type, TTL, value bytes): the fixtures of
tests/unit/test_session_stores.py were copied from its output.
"""

from __future__ import annotations

import sys
from typing import Any

import redis
from flask import Flask, session
from flask_session import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.redis import RedisStore

CART = ["sku-1", "sku-2"]


def flask_app(port: int, lifetime_s: int = 3600) -> Flask:
    """Flask-Session with its defaults (``SESSION_TYPE="redis"``), a login and a logout."""
    app = Flask("shop")
    app.config.update(
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis(port=port, socket_timeout=5),
        PERMANENT_SESSION_LIFETIME=lifetime_s,
    )
    Session(app)

    @app.post("/login")
    def login() -> dict[str, Any]:
        session["user"] = "alice"
        session["cart"] = CART
        session["visits"] = 1
        return {"ok": True}

    @app.post("/logout")
    def logout() -> dict[str, Any]:
        session.clear()
        return {"ok": True}

    return app


def starlette_app(port: int, lifetime_s: int = 3600) -> Starlette:
    """starsessions' SessionMiddleware on a RedisStore with its default prefix."""

    async def login(request: Request) -> JSONResponse:
        request.session["user"] = "alice"
        request.session["cart"] = CART
        request.session["visits"] = 1
        return JSONResponse({"ok": True})

    async def logout(request: Request) -> JSONResponse:
        request.session.clear()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"])]
    )
    store = RedisStore(connection=redis.asyncio.Redis(port=port, socket_timeout=5))
    app.add_middleware(SessionAutoloadMiddleware)
    app.add_middleware(SessionMiddleware, store=store, lifetime=lifetime_s, cookie_https_only=False)
    return app


def dump(client: redis.Redis) -> None:
    for key in sorted(client.scan_iter()):
        kind = client.type(key).decode()
        value = client.get(key) if kind == "string" else client.hgetall(key)
        print(key, kind, client.pttl(key), repr(value))


def main(port: int) -> None:
    client = redis.Redis(port=port, socket_timeout=5)
    with flask_app(port).test_client() as web:
        web.post("/login")
        print("# Flask-Session")
        dump(client)
    client.flushall()
    with TestClient(starlette_app(port)) as web:
        web.post("/login")
        print("# starsessions")
        dump(client)
    client.flushall()


if __name__ == "__main__":
    main(int(sys.argv[1]))
