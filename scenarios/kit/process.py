"""The inside of a service process: what every program a run starts does the same way.

- parse the common arguments (``--run``, ``--name``, ``--role``, ``--port``,
  ``--control`` the Redis URL the run narrates to, ``--t0`` the run's time
  origin) beside its own;
- register itself in ``coordscope:service:<run>:<name>`` (role, address, pid,
  status) and keep it fresh with a heartbeat that also carries its counters
  (requests served, the last request), so both screens show it;
- narrate what it does into the run's history (:class:`Narrator`);
- serve its Starlette app with uvicorn on 127.0.0.1, print ``ready`` once,
  and stop when told (SIGTERM) or when its run's heartbeat stops — a run
  killed with ``kill -9`` leaves no service behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from collectors.layouts import coordscope
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client
from scenarios.kit.history import Narrator, source_of

HEARTBEAT_S = 0.5
RUN_SILENT_MS = 4000
"""The run's heartbeat quiet this long: its process died, so this one goes too."""
REGISTRATION_TTL_MS = 30_000
NOTE_FLUSH_S = 0.005
"""How long ops noted without waiting (:meth:`ServiceRuntime.note`) gather before they are written."""


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--run", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control", required=True, help="Redis URL of the run's control node")
    p.add_argument("--t0", type=float, required=True, help="the run's time origin (monotonic clock)")
    p.add_argument("--incarnation", type=int, default=0, help="how many times it was started before")
    return p


class ServiceRuntime:
    def __init__(self, args: argparse.Namespace) -> None:
        self.run_id: str = args.run
        self.name: str = args.name
        self.role: str = args.role
        self.port: int = args.port
        self.control: Redis = redis_client(RedisTarget.from_url(args.control))
        # a restarted process narrates as a source of its own: its ops count from 0 again
        self.narrator = Narrator(self.control, self.run_id, source_of(self.name, args.incarnation), args.t0)
        self.key = coordscope.service_key(self.run_id, self.name)
        self.requests = 0
        self.last_request = ""
        self.last_request_ms = 0
        self.detail = ""
        """A word on its state, shown with it (an app instance's sessions in memory)."""
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self._noted = asyncio.Event()

    def served(self, what: str) -> None:
        """Count a request (written with the next heartbeat)."""
        self.requests += 1
        self.last_request = what[:120]
        self.last_request_ms = now_ms()

    async def record(self, actor: str, kind: str, f: str, **kw: Any) -> None:
        await self.narrator.record(actor, kind, f, **kw)

    def note(self, actor: str, kind: str, f: str, **kw: Any) -> None:
        """Narrate without waiting: written within :data:`NOTE_FLUSH_S` in one pipeline with
        whatever else came meanwhile (``await flush()`` first where it must be stored)."""
        self.narrator.later(actor, kind, f, **kw)
        self._noted.set()

    async def flush(self) -> None:
        await self.narrator.flush()

    async def crash(self, key: str, note: str, **data: Any) -> None:
        """Die here by SIGKILL, as a fault asked: a ``crash-point`` op first, stored with
        everything narrated before it, so the history says where the process died."""
        self.note(self.name, "info", "crash-point", key=key, note=note, data=data)
        await self.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    async def _flusher(self) -> None:
        while not self.stopping.is_set():
            await self._noted.wait()
            self._noted.clear()
            await asyncio.sleep(NOTE_FLUSH_S)  # what else comes meanwhile goes in the same pipeline
            await self.narrator.flush()

    def _fields(self, status: str) -> dict[str, str]:
        return {
            "name": self.name,
            "role": self.role,
            "address": f"127.0.0.1:{self.port}",
            "pid": str(os.getpid()),
            "status": status,
            "alive_ms": str(now_ms()),
            "requests": str(self.requests),
            "last_request": self.last_request,
            "last_request_ms": str(self.last_request_ms),
            "run": self.run_id,
            "detail": self.detail,
        }

    async def _beat(self, status: str, first: bool = False) -> None:
        pipe = self.control.pipeline(transaction=False)
        fields = self._fields(status)
        if first:
            fields["started_ms"] = fields["alive_ms"]
        pipe.hset(self.key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.pexpire(self.key, REGISTRATION_TTL_MS)
        pipe.hmget(coordscope.run_key(self.run_id), ["status", "alive_ms"])
        replies = await pipe.execute()
        run_status, alive = (v.decode() if isinstance(v, bytes) else v for v in replies[-1])
        if run_status != "running":
            self.stop(f"its run is {run_status or 'gone'}")
        elif alive and alive.isdigit() and now_ms() - int(alive) > RUN_SILENT_MS:
            self.stop("its run's heartbeat stopped (the run's process died)")

    async def heartbeat(self) -> None:
        unreachable_since: float | None = None
        while not self.stopping.is_set():
            try:
                await self._beat("up")
                unreachable_since = None
            except Exception:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > 10:
                    self.stop("the control node is unreachable")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), HEARTBEAT_S)

    def stop(self, why: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = why
            self.stopping.set()

    async def serve(
        self,
        routes: Sequence[BaseRoute],
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Register, serve these routes (and ``GET /healthz``) until stopped, unregister."""
        try:
            await self._serve(Starlette(routes=[*routes, Route("/healthz", _healthy)]), on_start)
        finally:
            if on_close is not None:
                await on_close()

    async def _serve(self, app: Any, on_start: Callable[[], Awaitable[None]] | None) -> None:
        await self._beat("starting", first=True)
        if on_start is not None:
            await on_start()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=60,  # a SIGTERM lets the requests in flight finish
            # longer than a client keeps an idle connection (httpx: 5 s): a request sent as
            # the server closes an idle one would fail for nothing (a "lost" reply, a retry)
            timeout_keep_alive=75,
        )
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"{signal.Signals(sig).name}")
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # it failed to start: say why
                raise SystemExit(f"{self.name}: uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        await self._beat("up")
        try:
            _ready()
        except OSError:  # the run died before it read our line: nobody to serve
            self.stop("the run that started it is gone")
        beating = asyncio.create_task(self.heartbeat())
        flushing = asyncio.create_task(self._flusher())
        stopper = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True  # SIGTERM, or the run went away
        self.stop("stopped")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 65)
        for task in (beating, flushing):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self.narrator.flush()
        with contextlib.suppress(Exception):
            await self.control.delete(self.key)
        await self.control.aclose()
        print(f"{self.name}: stopped ({self.stop_reason})", file=sys.stderr)


async def _healthy(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


class _Server(uvicorn.Server):
    """uvicorn whose signals are ours: a SIGTERM stops the service after it unregistered
    (uvicorn's own handler would raise the signal again once it stopped serving)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine: on uvloop when it is installed (a service on a hot
    path spends most of its CPU in the event loop and in parsing HTTP: uvloop and
    httptools, which uvicorn then picks, take a good part of it off)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _ready() -> None:
    """Tell the run we serve, once; stdout then goes nowhere (nobody reads it any more)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
