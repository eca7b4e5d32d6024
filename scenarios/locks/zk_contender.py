"""One ``lock-zk`` client's ZooKeeper side, as a process of its own.

A ZooKeeper lock is only as alive as its holder's session, and a session is
only as alive as the process that keeps it: so each contender is a real
process with its own kazoo session, and the faults act on it for real — a
SIGKILL stops its heartbeats and ZooKeeper deletes its node when the
session times out; a SIGSTOP longer than the session timeout has the server
expire the session while the process is frozen, and the process learns it
only when it resumes.

The run drives it over HTTP on its loopback port (``POST /acquire`` blocks
until the lock is held, ``POST /release``); the process narrates what only
it can see into the run's history: each session state change (CONNECTED,
SUSPENDED, LOST) and the predecessor it starts watching.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.kazoo_bridge import KazooBridge
from scenarios.kit.process import ServiceRuntime, parser
from scenarios.kit.zk_lock import ZkLock


class Contender:
    def __init__(
        self, runtime: ServiceRuntime, hosts: str, lock_name: str, owner: str, watch: str, session_ms: int
    ):
        self.runtime = runtime
        self.owner = owner
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_ms / 1000,
            connection_retry={"max_tries": -1, "delay": 0.05, "max_delay": 0.5},
        )
        self.bridge = KazooBridge(asyncio.get_running_loop())
        self.client.add_listener(lambda state: self.bridge.call_soon(self._session, str(state)))
        self.lock = ZkLock(self.client, self.bridge, lock_name, owner, watch)
        self.lock.on_wait = self._watching
        self._tasks: set[asyncio.Task[None]] = set()

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session(self, state: str) -> None:
        self._later(self.runtime.record(self.owner, "info", "session", value=state))

    def _watching(self, predecessor: str) -> None:
        self._later(self.runtime.record(self.owner, "info", "watch", note=f"watches {predecessor}"))

    async def start(self) -> None:
        await asyncio.to_thread(self.client.start, 15)

    async def acquire(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.runtime.served("acquire")
        try:
            hold = await self.lock.acquire(timeout=float(body.get("timeout_s", 30)))
        except (KazooException, TimeoutError) as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=503)
        return JSONResponse(
            {
                "node": hold.node,
                "seq": hold.seq,
                "czxid": hold.czxid,
                "wakeups": hold.wakeups,
                "requests": hold.requests,
            }
        )

    async def release(self, request: Request) -> JSONResponse:
        self.runtime.served("release")
        try:
            released = await self.lock.release()
        except KazooException as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=503)
        return JSONResponse({"released": released})

    async def close(self) -> None:
        await self.lock.abandon()
        self.client.state_listeners.clear()
        await asyncio.to_thread(self.client.stop)
        await asyncio.to_thread(self.client.close)


async def main() -> None:
    p = parser("a lock-zk contender: one ZooKeeper session, one place in the lock's queue")
    p.add_argument("--hosts", required=True)
    p.add_argument("--lock", required=True)
    p.add_argument("--watch", default="predecessor")
    p.add_argument("--session-ms", type=int, default=4000)
    args = p.parse_args()
    runtime = ServiceRuntime(args)
    contender = Contender(runtime, args.hosts, args.lock, args.name, args.watch, args.session_ms)
    routes = [
        Route("/acquire", contender.acquire, methods=["POST"]),
        Route("/release", contender.release, methods=["POST"]),
    ]
    await runtime.serve(routes, on_start=contender.start, on_close=contender.close)


if __name__ == "__main__":
    asyncio.run(main())
