"""A keyspace subscription of our own: one connection, parsed by hiredis directly.

Why not redis-py's ``pubsub.listen()``
--------------------------------------
Its loop costs an ``await``, a parse call and a message dict per
notification, and it re-subscribes by itself after a dropped connection,
hiding the notifications lost in between. Here an :class:`asyncio.Protocol`
feeds every chunk the socket delivers to a ``hiredis.Reader`` and hands each
``pmessage`` to a callback in a plain loop: no await per message, so a burst
is drained as fast as hiredis parses it (``bench/keyspace.py`` compares the
two in one run). A dropped connection ends the subscription; the collector
opens a new one and treats its confirmation as a gap.

Before subscribing, the connection authenticates, names itself
``coordscope-watch`` and asks ``CLIENT ID``: the id lets the collector read
this connection's output buffer on the server (``CLIENT LIST ID``), which is
what Redis would disconnect us for if we fell behind.

Error handling
--------------
A connection that cannot be opened or authenticated raises ``OSError`` or
:class:`SubscriptionError` from :meth:`Subscription.open`. Once subscribed,
every end — closed by the server (``CLIENT KILL``, an output buffer limit),
a reset, a protocol error — resolves :attr:`Subscription.ended` with the
reason; nothing is raised into the callbacks' caller.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

from collectors.targets import RedisTarget

OnKey = Callable[[bytes, bytes], None]
"""Called with (key, event) for every notification."""

HANDSHAKE_TIMEOUT_S = 5.0


class SubscriptionError(ConnectionError):
    """The server refused the handshake (bad password, no ACL for PSUBSCRIBE...)."""


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class Subscription(asyncio.Protocol):
    def __init__(self, prefix: bytes, on_key: OnKey, on_subscribed: Callable[[], None]) -> None:
        self._cut = len(prefix)
        self._on_key = on_key
        self._on_subscribed = on_subscribed
        self._reader = hiredis.Reader()
        self._replies: deque[asyncio.Future[Any]] = deque()
        """Futures of the handshake's commands, answered in order."""
        self._transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolved with the reason when the connection ends."""
        self.client_id: int | None = None
        self.messages = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls, target: RedisTarget, on_key: OnKey, on_subscribed: Callable[[], None]
    ) -> Subscription:
        pattern = f"__keyspace@{target.db}__:*".encode()
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if target.tls else None
        proto = cls(pattern[:-1], on_key, on_subscribed)
        await asyncio.wait_for(
            loop.create_connection(lambda: proto, target.host, target.port, ssl=context),
            HANDSHAKE_TIMEOUT_S,
        )
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                if target.password is not None:
                    auth = (target.username, target.password) if target.username else (target.password,)
                    await proto._ask(b"AUTH", *auth)
                await proto._ask(b"CLIENT", b"SETNAME", b"coordscope-watch")
                proto.client_id = int(await proto._ask(b"CLIENT", b"ID"))
        except BaseException:
            proto.close()
            raise
        proto._send(command(b"PSUBSCRIBE", pattern))
        return proto

    async def _ask(self, *args: bytes | str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(future)
        self._send(command(*args))
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            name = args[0].decode() if isinstance(args[0], bytes) else args[0]
            raise SubscriptionError(f"{name} refused: {reply}")
        return reply

    def _send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("the subscription's connection is closed")
        self._transport.write(data)

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """The hot path: parse everything that arrived, one callback per notification."""
        reader = self._reader
        reader.feed(data)
        on_key, cut = self._on_key, self._cut
        try:
            reply = reader.gets()
            while reply is not False:
                if type(reply) is list and reply[0] == b"pmessage":
                    on_key(reply[2][cut:], reply[3])
                    self.messages += 1
                elif self._replies:
                    self._replies.popleft().set_result(reply)
                elif type(reply) is list and reply[0] == b"psubscribe":
                    self._on_subscribed()
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._end(f"protocol error: {exc}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"{type(exc).__name__}: {exc}" if exc else "closed by the server")

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
        while self._replies:
            future = self._replies.popleft()
            if not future.done():
                future.set_exception(ConnectionError(why))

    # ------------------------------------------------------------------ control

    def pause_reading(self) -> None:
        """Stop reading the socket (the server's output buffer for us then grows)."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._end("closed by us")
