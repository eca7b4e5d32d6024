"""The web view: Starlette routes over the shared core, served by uvicorn.

``create_app(core)`` gives the ASGI app; it starts and stops the core with
its lifespan unless the caller (``coordscope demo``) owns the core's life.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from app.core import Core
from app.web import api, replay
from app.web.guard import Guard, is_loopback
from app.web.socket import websocket_endpoint

STATIC = Path(__file__).resolve().parent.parent.parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


async def not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such path: {request.url.path}"}, status_code=404)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)


def create_app(core: Core, token: str | None = None, own_core: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_core:
            await core.start()
        try:
            yield
        finally:
            if own_core:
                await core.stop()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", api.get_state),
            Route("/api/scenarios", api.get_scenarios),
            Route("/api/families", api.get_families),
            Route("/api/detail", api.get_detail),
            Route("/api/runs", api.list_runs, methods=["GET"]),
            Route("/api/runs", api.start_run, methods=["POST"]),
            Route("/api/runs/{run_id}", api.get_run),
            Route("/api/runs/{run_id}/faults", api.inject_fault, methods=["POST"]),
            Route("/api/runs/{run_id}/stop", api.stop_run, methods=["POST"]),
            Route("/api/replay", replay.get_replay, methods=["GET"]),
            Route("/api/replay", replay.post_replay, methods=["POST"]),
            WebSocketRoute("/ws", websocket_endpoint),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed},
        lifespan=lifespan,
    )
    app.state.core = core
    app.state.guard = Guard(token=token)
    return app


def token_for(host: str, given: str | None) -> str | None:
    """No token on loopback (unless given); a random one anywhere else."""
    if given:
        return given
    return None if is_loopback(host) else secrets.token_urlsafe(18)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside another app's event loop (the TUI's): the host app owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: Starlette, host: str, port: int, embedded: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        # asyncio's own loop, not uvloop even where it is installed (the scenario services
        # use it): what the viewers' figures were measured on, and the loop whose
        # transports' buffers the slow-viewer guard reads
        loop="asyncio",
        ws="websockets-sansio",
        # The same batch goes to every viewer, encoded once; compression would redo the
        # work per connection (100 viewers: 65-79% CPU with it, 27-29% without, measured
        # by bench/scale.py). The page runs on loopback or a LAN.
        ws_per_message_deflate=False,
        access_log=False,
    )
    return EmbeddedServer(config) if embedded else uvicorn.Server(config)
