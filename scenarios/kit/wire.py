"""One Redis connection shared by many concurrent callers, for a service's hot path.

Redis answers the commands of one connection in the order it received them.
So a service can write each caller's command on one connection the moment
it comes, and hand the replies out in the same order: no pool checkout, no
per-command wrapper, and concurrent requests share their system calls. With
redis-py's client, the two script calls of an idempotency mark cost a
payment service ~135 µs of CPU per request; here ~30 µs (measured by
``bench/idempotency.py``'s account and a micro-benchmark): what takes the
mark's cost from 0.78× to 0.83× of an unguarded payment's throughput.

Error handling
--------------
A reply that does not come within ``timeout_s`` raises ``TimeoutError`` for
that caller; its place in the line is kept, so the late reply is matched to
it and dropped, and the others' replies stay in step. A lost connection
fails every caller waiting on it (``ConnectionError``); the next call
connects again (with AUTH, SELECT and TLS as the target says). Error replies
raise redis-py's exceptions (``NoScriptError`` for ``NOSCRIPT``, else
``ResponseError``), so callers handle them as they would redis-py's.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

import hiredis
from redis import exceptions as redis_errors

from collectors.targets import RedisTarget


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiting.popleft()
            if not waiter.done():  # a caller that timed out kept its place in the line
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(redis_errors.ConnectionError(f"connection lost: {exc or 'closed'}"))


class Wire:
    def __init__(self, target: RedisTarget, timeout_s: float = 3.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.transport is not None

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and self._protocol.transport is not None:
                return self._protocol
            t = self.target
            context = ssl.create_default_context() if t.tls else None
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, protocol = await asyncio.get_running_loop().create_connection(
                        _Protocol, t.host, t.port, ssl=context
                    )
            except (OSError, TimeoutError) as exc:
                raise redis_errors.ConnectionError(f"cannot connect to {t.address}: {exc}") from None
            # set up before anyone else may use it: a command slipped in between AUTH and
            # SELECT would run in the wrong database
            try:
                if t.password is not None:
                    auth = ("AUTH", t.username, t.password) if t.username else ("AUTH", t.password)
                    await self._send(protocol, auth)
                if t.db:
                    await self._send(protocol, ("SELECT", t.db))
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.close()
                raise
            self._protocol = protocol
            return protocol

    async def call(self, *args: str | int | bytes) -> Any:
        """Send one command and wait for its reply (errors raised as redis-py's)."""
        protocol = self._protocol if self.connected else await self._connect()
        assert protocol is not None
        return await self._send(protocol, args)

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        if protocol.transport is None:
            raise redis_errors.ConnectionError(f"connection to {self.target.address} lost")
        packed = hiredis.pack_command(args)  # first: a command that cannot be sent takes no place in line
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(waiter)
        protocol.transport.write(packed)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await waiter
        except TimeoutError:
            raise redis_errors.TimeoutError(f"{self.target.address} did not answer in time") from None
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if message.startswith("NOSCRIPT"):
                raise redis_errors.NoScriptError(message)
            raise redis_errors.ResponseError(message)
        return reply

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
