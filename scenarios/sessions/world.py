"""What the session run's users and its nemesis share, and how a user sends a request.

A user's browser is a :class:`scenarios.kit.http.Http` of its own (its cookie jar keeps
the session's cookie and HAProxy's ``SERVERID``). Every request is narrated on the
user's lane: an ``invoke`` and its outcome, the instance that served it, the user and
cart the app answered with, a tick for a login, a logout, a 401 (``kicked``) or
another's session (``leak``). A 401 to a browsing user is followed by a new login, as a
user would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from scenarios.kit.balancer import Balancer
from scenarios.kit.context import RunContext
from scenarios.kit.http import Http, Reply
from scenarios.kit.services import Service
from scenarios.sessions import checker
from scenarios.sessions.stores import Store

BALANCER = "haproxy"
REQUEST_TIMEOUT_S = 5.0


@dataclass
class World:
    """What the users and the nemesis share in one run."""

    ctx: RunContext
    balancer: Balancer
    services: list[Service]
    store_node: str
    store: Redis
    sessions: Store
    """The run's own handle on the store its instances use: which keys hold a session."""
    notifications: dict[str, str] = field(default_factory=dict)
    """Node -> its notify-keyspace-events before notifications-off (restored at the end)."""
    off_since: float | None = None
    requests: int = 0
    down: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Killed instances waiting to be started again."""

    @property
    def idle_ms(self) -> int:
        return self.ctx.number("idle_s") * 1000

    def accounts(self) -> dict[str, checker.Account]:
        """Each user as the run's history tells it so far (the verdict's own reading)."""
        return checker.accounts(self.ctx.history.ops, self.idle_ms)[0]


async def login(world: World, user: str, browser: Http, rotate: bool = False) -> Reply:
    body = {"user": user, "rotate": rotate}
    for _ in range(20):  # an unanswered login (a restart, a 503) is tried again
        reply = await request(world, user, browser, "login", body)
        if reply.ok or world.ctx.stopping.is_set():
            return reply
        await asyncio.sleep(0.2)
    return reply


async def request(
    world: World, user: str, browser: Http, path: str, body: dict[str, Any] | None = None
) -> Reply:
    ctx = world.ctx
    world.requests += 1
    span = f"{user}#{world.requests}"
    ctx.record(user, "invoke", "request", key=path, note=path, data={"span": span})
    if path == "browse":
        reply = await browser.get(world.balancer.address, "/browse", REQUEST_TIMEOUT_S)
    else:
        reply = await browser.post(world.balancer.address, f"/{path}", body or {}, REQUEST_TIMEOUT_S)
    served = str(reply.body.get("instance", BALANCER)) if reply.status is not None else ""
    data: dict[str, Any] = {"span": span, "served_by": served, "code": reply.status}
    if reply.ok:
        seen, cart = reply.body.get("user"), reply.body.get("cart") or []
        data |= {"user": seen, "cart": cart, "session": reply.body.get("session")}
        tick = {"login": "login", "logout": "logout"}.get(path)
        if user != checker.ATTACKER and path not in ("visit", "logout") and seen != user:
            tick = "leak"
        if tick:
            data["tick"] = tick
        note = (
            f"{path}: {reply.status} by {served}"
            + (f": {seen}" if seen else "")
            + (f", cart {len(cart)}" if cart else "")
        )
        ctx.record(user, "ok", "request", key=path, note=note, data=data)
        return reply
    if reply.status == 401:
        ctx.record(
            user,
            "fail",
            "request",
            key=path,
            note=f"{path}: 401 not logged in (by {served})",
            data=data | {"tick": "kicked"},
        )
        if user != checker.ATTACKER and path in ("browse", "cart") and not ctx.stopping.is_set():
            await login(world, user, browser)
        return reply
    if reply.status is not None:
        error = str(reply.body.get("error") or reply.body.get("text", ""))[:80]
        kind, note, tick = "fail", f"{reply.status} {error}".strip(), "error"
    else:
        kind, note, tick = "info", f"no reply ({reply.error})", "timeout"
    ctx.record(user, kind, "request", key=path, note=note, data=data | {"tick": tick})
    return reply
