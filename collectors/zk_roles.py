"""Who leads a ZooKeeper ensemble: each server's role, by the ``srvr`` four-letter word.

A ZooKeeper client session says nothing about roles, and kazoo talks to one
server at a time. So every server of the connect string is asked on its own:
a plain TCP connection to its client port, the four bytes ``srvr``, and the
text it answers until it closes the connection. Its ``Mode:`` line is the
role: ``leader``, ``follower``, ``observer`` or ``standalone``. The collector
polls this at a stated interval (``ZkTarget.roles_interval_s``, 1 s by
default): there is no change feed for roles.

Error handling
--------------
Nothing here raises. A refused or timed-out connection is a server that is
down; a server whose ``4lw.commands.whitelist`` leaves out ``srvr`` answers
"srvr is not executed because it is not in the whitelist" — it is up, its
role unknown; a server that answers without a ``Mode:`` line (still starting,
or between elections: "This ZooKeeper instance is not currently serving
requests") is up and has no role yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

MAX_REPLY = 64 * 1024
NOT_SERVING = "not currently serving"


@dataclass(frozen=True)
class ServerRole:
    host: str
    port: int
    up: bool
    role: str
    """leader | follower | observer | standalone | "role unknown (4lw disabled)" |
    "no role (not serving)" | "down"."""
    detail: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


async def srvr(host: str, port: int, timeout: float = 1.0) -> ServerRole:
    """Ask one server its role (never raises)."""
    try:
        reply = await asyncio.wait_for(_ask(host, port, b"srvr"), timeout)
    except (OSError, TimeoutError) as exc:
        return ServerRole(host, port, up=False, role="down", detail=type(exc).__name__)
    return parse(host, port, reply)


def parse(host: str, port: int, reply: str) -> ServerRole:
    for line in reply.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Mode":
            return ServerRole(host, port, up=True, role=value.strip())
    if "whitelist" in reply:
        return ServerRole(host, port, up=True, role="role unknown (4lw disabled)", detail=reply.strip())
    if NOT_SERVING in reply:
        return ServerRole(host, port, up=True, role="no role (not serving)", detail=reply.strip())
    return ServerRole(host, port, up=True, role="role unknown", detail=reply.strip()[:200])


async def _ask(host: str, port: int, word: bytes) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(word)
        await writer.drain()
        reply = b""
        while len(reply) < MAX_REPLY and (chunk := await reader.read(4096)):  # until it closes
            reply += chunk
        return reply.decode("utf-8", errors="replace")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
