"""Connections of our own to Redis, parsed by hiredis directly.

Why not redis-py here
---------------------
The two hot paths of a Redis collector are the keyspace subscription and
the read-back of the keys it names. redis-py's ``pubsub.listen()`` costs an
``await``, a parse call and a message dict per notification, and
re-subscribes by itself after a dropped connection, hiding the
notifications lost in between; its pipelines pack and parse every command
through layers of Python. Here an :class:`asyncio.Protocol` feeds every
chunk the socket delivers to a ``hiredis.Reader``:

- :class:`Subscription` hands each ``pmessage`` to a callback in a plain
  loop — no await per message, so a burst drains as fast as hiredis parses
  it. A dropped connection ends it; the collector opens a new one and treats
  its confirmation as a gap. Before subscribing it names itself
  ``coordscope-watch`` and asks ``CLIENT ID``, so the collector can read
  this connection's output buffer on the server (``CLIENT LIST ID``).
- :class:`Reads` sends a batch of commands in one write and resolves when
  all their replies are in, in order; several batches may be in flight at
  once (Redis answers in order). Error replies come back as
  ``hiredis.ReplyError`` values in their place, never raised.

``bench/keyspace.py`` compares both with redis-py in one run.

Error handling
--------------
A connection that cannot be opened or authenticated raises ``OSError`` or
:class:`HandshakeError` from ``open``. Once open, every end — closed by the
server (``CLIENT KILL``, an output buffer limit), a reset, a protocol error —
resolves :attr:`RespConnection.ended` with the reason and fails every
request still waiting with ``ConnectionError``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis

from collectors.targets import RedisTarget

Arg = bytes | str | int
OnKey = Callable[[bytes, bytes], None]
"""Called with (key, event) for every notification."""

HANDSHAKE_TIMEOUT_S = 5.0
ASKING = b"*1\r\n$6\r\nASKING\r\n"


@dataclass(frozen=True)
class Redirect:
    """A Redis Cluster node's ``MOVED`` or ``ASK``: the key's slot is served elsewhere."""

    host: str
    port: int
    ask: bool


def redirect_of(reply: Any) -> Redirect | None:
    """The redirect an error reply carries (``MOVED 3999 127.0.0.1:6381``), if it is one."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    parts = str(reply).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return Redirect(host=host, port=int(port), ask=parts[0] == "ASK") if port.isdigit() else None


class HandshakeError(ConnectionError):
    """The server refused the handshake (bad password, no ACL for a command...)."""


def command(*args: Arg) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Waiting:
    __slots__ = ("count", "future", "replies", "sent_at", "step")

    def __init__(self, count: int, future: asyncio.Future[list[Any]], sent_at: float, step: int) -> None:
        self.count = count
        self.future = future
        self.replies: list[Any] = []
        self.sent_at = sent_at
        self.step = step
        """1, or 2 when every command went after an ``ASKING`` whose reply is dropped."""


class RespConnection(asyncio.Protocol):
    name = "coordscope"

    asking = False
    """Send every command after an ``ASKING`` (a Redis Cluster node: see :class:`Reads`)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[_Waiting] = deque()
        self._transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolved with the reason when the connection ends."""
        self.client_id: int | None = None

    @classmethod
    async def _connect(cls, target: RedisTarget, proto: RespConnection, db: bool) -> None:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if target.tls else None
        await asyncio.wait_for(
            loop.create_connection(lambda: proto, target.host, target.port, ssl=context),
            HANDSHAKE_TIMEOUT_S,
        )
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                if target.password is not None:
                    auth = (target.username, target.password) if target.username else (target.password,)
                    await proto.ask(b"AUTH", *auth)
                if db and target.db:
                    await proto.ask(b"SELECT", target.db)
                await proto.ask(b"CLIENT", b"SETNAME", proto.name)
                proto.client_id = int(await proto.ask(b"CLIENT", b"ID"))
        except BaseException:
            proto.close()
            raise

    async def ask(self, *args: Arg) -> Any:
        """One command; an error reply raises :class:`HandshakeError`."""
        (reply,) = await self.execute([args])
        if isinstance(reply, hiredis.ReplyError):
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            raise HandshakeError(f"{name} refused: {reply}")
        return reply

    def execute(self, commands: Sequence[Sequence[Arg]]) -> asyncio.Future[list[Any]]:
        """Send these commands at once; the future gets their replies, in order."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not commands:
            future.set_result([])
            return future
        if self.asking:
            self._send(b"".join(ASKING + command(*c) for c in commands))
            self._waiting.append(_Waiting(2 * len(commands), future, time.monotonic(), 2))
        else:
            self._send(b"".join(command(*c) for c in commands))
            self._waiting.append(_Waiting(len(commands), future, time.monotonic(), 1))
        return future

    def overdue(self, seconds: float) -> bool:
        """Has the oldest request waited longer than this? (One watchdog instead of a
        timeout per request: the read-back is the hot path.)"""
        return bool(self._waiting) and time.monotonic() - self._waiting[0].sent_at > seconds

    def _send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing() or self.ended.done():
            raise ConnectionError("the connection is closed")
        self._transport.write(data)

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport whatever the loop (uvloop's do not subclass asyncio.Transport)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                self._reply(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._end(f"protocol error: {exc}")
            self.close()

    def _reply(self, reply: Any) -> None:
        waiting = self._waiting[0]
        waiting.replies.append(reply)
        if len(waiting.replies) == waiting.count:
            self._waiting.popleft()
            if not waiting.future.done():
                replies = waiting.replies
                waiting.future.set_result(replies[1::2] if waiting.step == 2 else replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"{type(exc).__name__}: {exc}" if exc else "closed by the server")

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
        while self._waiting:
            future = self._waiting.popleft().future
            if not future.done():
                future.set_exception(ConnectionError(why))

    def pause_reading(self) -> None:
        """Stop reading the socket (the server's output buffer for us then grows)."""
        if self._transport is not None:
            self._transport.pause_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._end("closed by us")


class Reads(RespConnection):
    """A connection for pipelined reads (the collector's read-back of dirty keys).

    On a Redis Cluster node it reads with ``READONLY`` (a replica serves its primary's
    keys to us) and sends every command after an ``ASKING``, so a node importing a slot
    serves a key it was just given instead of redirecting us back to the source (a node
    that owns the slot ignores it); the replies come back as if it was not sent."""

    name = "coordscope-read"

    @classmethod
    async def open(cls, target: RedisTarget) -> Reads:
        proto = cls()
        await cls._connect(target, proto, db=not target.cluster)
        if target.cluster:
            await proto.ask(b"READONLY")
            proto.asking = True
        return proto


class Subscription(RespConnection):
    """The keyspace subscription: every ``pmessage`` to a callback, in a plain loop."""

    name = "coordscope-watch"

    def __init__(
        self,
        prefix: bytes,
        on_key: OnKey,
        on_subscribed: Callable[[], None],
        on_chunk: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._cut = len(prefix)
        self.on_key = on_key
        """Where each notification goes (the collector swaps it during a burst)."""
        self._on_subscribed = on_subscribed
        self._on_chunk = on_chunk
        """Called after the notifications of one read from the socket (a ``SET ... PX``
        sends ``set`` and ``expire`` together: acting once per chunk sees both)."""

    @classmethod
    async def open(
        cls,
        target: RedisTarget,
        on_key: OnKey,
        on_subscribed: Callable[[], None],
        on_chunk: Callable[[], None] | None = None,
    ) -> Subscription:
        pattern = f"__keyspace@{target.db}__:*".encode()
        proto = cls(pattern[:-1], on_key, on_subscribed, on_chunk)
        await cls._connect(target, proto, db=False)
        proto._send(command(b"PSUBSCRIBE", pattern))
        return proto

    def data_received(self, data: bytes) -> None:
        """The hot path: parse everything that arrived, one callback per notification."""
        reader = self._reader
        reader.feed(data)
        on_key, cut = self.on_key, self._cut
        try:
            reply = reader.gets()
            while reply is not False:
                if type(reply) is list and reply[0] == b"pmessage":
                    on_key(reply[2][cut:], reply[3])
                elif self._waiting:
                    self._reply(reply)
                elif type(reply) is list and reply[0] == b"psubscribe":
                    self._on_subscribed()
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._end(f"protocol error: {exc}")
            self.close()
            return
        if self._on_chunk is not None:
            self._on_chunk()
