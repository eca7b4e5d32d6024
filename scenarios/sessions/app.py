"""One app instance of the session run: a Starlette app under uvicorn, a process of its own,
behind the run's HAProxy.

Routes (every reply is JSON naming the ``instance`` that served it, and carries an
``X-Served-By`` header):

- ``POST /visit`` — an anonymous visit: the session the browser has, or a new one;
- ``POST /login {"user", "rotate"}`` — the user logs in. With ``rotate`` the session id
  changes (Spring's ``changeSessionId``, against session fixation), else the
  pre-login session simply becomes the user's;
- ``GET /browse`` and ``POST /cart {"item"}`` — 401 without a logged-in session; else
  the user, the cart, the session id;
- ``POST /logout`` — the session deleted, the cookie cleared.

The session cookie is Spring Session's: ``SESSION``, the id in base64. With
``store=redis`` every instance also runs Spring's minute job (the ended minute's
expiry bucket read and deleted), as a Spring Session application does. Each request
touches the session (``lastAccessedTime``) and records which instance served it in
the ``servedBy`` attribute, so the sessions panel shows it for readable layouts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
import uuid
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client
from scenarios.kit.process import ServiceRuntime, parser
from scenarios.sessions.spring import SpringStore
from scenarios.sessions.stores import (
    CART,
    SERVED_BY,
    STORES,
    USER,
    ContainerStore,
    LocalStore,
    SessionData,
    Store,
    now_ms,
)

COOKIE = "SESSION"


def cookie_value(session_id: str) -> str:
    return base64.b64encode(session_id.encode()).decode()


def session_of_cookie(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


class App:
    def __init__(self, runtime: ServiceRuntime, store: Store, idle_s: int) -> None:
        self.rt = runtime
        self.name = runtime.name
        self.store = store
        self.idle_s = idle_s

    def reply(self, body: dict[str, Any], status: int = 200, session: SessionData | None = None,
              clear: bool = False) -> JSONResponse:  # fmt: skip
        resp = JSONResponse({"instance": self.name, **body}, status_code=status)
        resp.headers["X-Served-By"] = self.name
        if session is not None:
            resp.set_cookie(COOKIE, cookie_value(session.id), httponly=True, samesite="lax")
        elif clear:
            resp.delete_cookie(COOKIE)
        return resp

    async def current(self, request: Request) -> SessionData | None:
        """The request's session, touched (last access now, served by this instance)."""
        session_id = session_of_cookie(request.cookies.get(COOKIE))
        return await self.store.touch(session_id, {SERVED_BY: self.name}) if session_id else None

    def new_session(self) -> SessionData:
        now = now_ms()
        return SessionData(str(uuid.uuid4()), now, now, self.idle_s, {SERVED_BY: self.name})

    def state(self, data: SessionData) -> dict[str, Any]:
        return {"user": data.user, "cart": data.cart, "session": data.id}

    async def visit(self, request: Request) -> JSONResponse:
        self.rt.served("visit")
        data = await self.current(request)
        if data is None:
            data = self.new_session()
            await self.store.save(data, set(data.attrs), new=True)
        return self.reply(self.state(data), session=data)

    async def login(self, request: Request) -> JSONResponse:
        body = await _json(request)
        user = str(body.get("user", ""))[:64]
        if not user:
            return self.reply({"error": "a login needs a user"}, 400)
        self.rt.served(f"login {user}")
        data = await self.current(request)
        before = data.id if data is not None else None
        if data is None:
            data = self.new_session()
            data.attrs[USER] = user
            await self.store.save(data, set(data.attrs), new=True)
        else:
            if body.get("rotate"):
                await self.store.rotate(data, str(uuid.uuid4()))
            data.attrs[USER] = user
            data.attrs.pop(CART, None)  # a new login starts with an empty cart
            await self.store.save(data, {USER, CART}, old_last_ms=data.last_ms)
        return self.reply({**self.state(data), "before": before}, session=data)

    async def browse(self, request: Request) -> JSONResponse:
        self.rt.served("browse")
        data = await self.current(request)
        if data is None or not data.user:
            return self.reply({"error": "not logged in"}, 401)
        return self.reply(self.state(data), session=data)

    async def cart(self, request: Request) -> JSONResponse:
        body = await _json(request)
        item = str(body.get("item", ""))[:64].replace(",", " ")
        self.rt.served(f"cart +{item}")
        data = await self.current(request)
        if data is None or not data.user:
            return self.reply({"error": "not logged in"}, 401)
        data.attrs[CART] = ",".join([*data.cart, item])
        await self.store.set_attributes(data, {CART})
        return self.reply(self.state(data), session=data)

    async def logout(self, request: Request) -> JSONResponse:
        self.rt.served("logout")
        data = await self.current(request)
        if data is not None:
            await self.store.delete(data)
        return self.reply({"user": data.user if data else None, "session": data.id if data else None},
                          clear=True)  # fmt: skip


def store_for(name: str, redis: Redis | None, run_id: str) -> Store:
    if name in ("local", "sticky"):
        return LocalStore()
    if redis is None:
        raise ValueError(f"store={name} keeps sessions in Redis: give --redis")
    return ContainerStore(redis, run_id) if name == "container" else SpringStore(redis, run_id)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _guarded(handler: Any) -> Any:
    """The store failed (Redis restarting, down): 503, never a crash of the instance."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            result: JSONResponse = await handler(request)
            return result
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            app: App = handler.__self__
            return app.reply({"error": f"session store unavailable: {type(exc).__name__}"}, 503)

    return endpoint


async def main() -> None:
    p = parser("an app instance of the session run")
    p.add_argument("--store", choices=STORES, required=True)
    p.add_argument("--redis", default="", help="Redis URL of the session store")
    p.add_argument("--idle-s", type=int, required=True)
    args = p.parse_args()
    rt = ServiceRuntime(args)
    redis = (
        redis_client(RedisTarget.from_url(args.redis))
        if args.redis and args.store in ("redis", "container")
        else None
    )
    app = App(rt, store_for(args.store, redis, rt.run_id), args.idle_s)

    async def beat_detail() -> None:
        while not rt.stopping.is_set():
            held = app.store.held()
            if held is not None:
                rt.detail = f"{held} session(s) in memory"
            await asyncio.sleep(0.5)

    beating: list[asyncio.Task[None]] = []

    async def clean_every_minute(store: SpringStore) -> None:
        while not rt.stopping.is_set():
            await asyncio.sleep(60 - time.time() % 60 + 0.01)  # at second 0 of every minute
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await store.clean_expired(now_ms())

    async def on_start() -> None:
        beating.append(asyncio.create_task(beat_detail()))
        if isinstance(app.store, SpringStore):
            beating.append(asyncio.create_task(clean_every_minute(app.store)))

    async def on_close() -> None:
        for task in beating:
            task.cancel()
        if redis is not None:
            await redis.aclose()

    routes = [
        Route("/visit", _guarded(app.visit), methods=["POST"]),
        Route("/login", _guarded(app.login), methods=["POST"]),
        Route("/browse", _guarded(app.browse), methods=["GET"]),
        Route("/cart", _guarded(app.cart), methods=["POST"]),
        Route("/logout", _guarded(app.logout), methods=["POST"]),
    ]
    await rt.serve(routes, on_start, on_close)


if __name__ == "__main__":
    asyncio.run(main())
