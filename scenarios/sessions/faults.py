"""The session run's faults, struck at user-1's request (see :mod:`scenarios.sessions.session`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis

from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import ScenarioError
from scenarios.kit.clients import redis_client
from scenarios.kit.http import Http
from scenarios.kit.nemesis import outage
from scenarios.sessions import checker
from scenarios.sessions.app import COOKIE, cookie_value, session_of_cookie
from scenarios.sessions.world import World, login, request

FAULTS = ("kill-instance", "expire", "notifications-off", "redis-restart-no-persistence", "rotate-id")


async def strike(world: World, user: str, browser: Http, fault: str) -> None:
    ctx = world.ctx
    if fault == "kill-instance":
        victim = world.accounts()[user].last_served or world.services[0].name
        ctx.record(NEMESIS, "info", "fault", value=fault, note=f"SIGKILL {victim} (it served {user} last)")
        await ctx.services.kill(victim, why="kill-instance", narrate=True)
        world.down[victim] = asyncio.get_running_loop().create_task(_bring_back(world, victim))
    elif fault == "expire":
        await _expire(world, user, browser)
    elif fault == "notifications-off":
        await _notifications_off(world)
    elif fault == "redis-restart-no-persistence":
        if ctx.env.cluster is None or ctx.env.redis_cluster:
            ctx.record(
                NEMESIS, "info", "fault-refused", value=fault, note="needs the local cluster's session node"
            )
            return
        await outage(ctx, fault, world.store_node, 100, healed=f"{world.store_node} restarted empty")
    elif fault == "rotate-id":
        await _rotate(world, user, browser)


async def _bring_back(world: World, name: str) -> None:
    try:
        await asyncio.sleep(world.ctx.number("fault_ms") / 1000)
    except asyncio.CancelledError:
        world.ctx.record(
            NEMESIS, "info", "heal", value="kill-instance", note=f"the run ended with {name} down"
        )
        raise
    with contextlib.suppress(ScenarioError):
        await world.ctx.services.restart(name)
        world.ctx.record(NEMESIS, "info", "heal", value="kill-instance", note=f"{name} started again")


async def _expire(world: World, user: str, browser: Http) -> None:
    """The user goes idle past the timeout; the session's key expiring is watched."""
    ctx = world.ctx
    session_id = session_of_cookie(browser.cookie(COOKIE))
    key = world.sessions.ttl_key(session_id) if session_id else None
    wait_s = world.idle_ms / 1000 + 1
    ctx.record(NEMESIS, "info", "fault", value="expire", note=f"{user} goes idle for {wait_s:g} s")
    if key is None:
        await asyncio.sleep(wait_s)
        ctx.record(
            user,
            "info",
            "expire",
            note=f"{user}'s session lives in an instance's memory: no key to watch, its next request tells",
            data={"tick": "expired"},
        )
    else:
        await _watch_expiry(world, user, key, wait_s)
    ctx.record(NEMESIS, "info", "heal", value="expire", note=f"{user} comes back")


async def _watch_expiry(world: World, user: str, key: str, wait_s: float) -> None:
    ctx = world.ctx
    pttl = await world.store.pttl(key)
    if pttl is None or pttl < 0:
        ctx.record(user, "info", "expire", note=f"{key} had no TTL left to watch ({pttl})")
        await asyncio.sleep(wait_s)
        return
    ttl_end = time.time() * 1000 + pttl
    seen, via = await _expired_at(world, key, pttl / 1000 + 5)
    delay = round(seen - ttl_end) if seen is not None else None
    if delay is None:
        note = f"{user}'s session key {key} did not expire within {pttl / 1000 + 5:g} s of its TTL"
    else:
        note = f"{user}'s session expired after its idle timeout: {via} {delay} ms after its TTL ended"
    ctx.record(
        user,
        "info",
        "expire",
        key=key,
        note=note,
        data={"tick": "expired", "delay_ms": delay, "via": via, "ttl_ms": pttl},
    )
    rest = wait_s - (time.time() * 1000 - (ttl_end - pttl)) / 1000
    if rest > 0:
        await asyncio.sleep(rest)


async def _expired_at(world: World, key: str, timeout_s: float) -> tuple[float | None, str]:
    """When the key's ``expired`` event arrived (wall clock, ms), or when polling found it gone
    (notifications off, or a Redis Cluster)."""
    target = world.ctx.env.target(world.store_node)
    if not target.cluster and world.off_since is None:
        sub = Redis.from_url(target.url)
        pubsub = sub.pubsub()
        try:
            await pubsub.subscribe(f"__keyevent@{target.db}__:expired")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if msg is not None and msg.get("data") in (key, key.encode()):
                    return time.time() * 1000, "Redis's expired event came"
            return None, ""
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await sub.aclose()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not await world.store.exists(key):
            return time.time() * 1000, "polling found it gone"
        await asyncio.sleep(0.01)
    return None, ""


def _notification_nodes(world: World) -> list[str]:
    """The session node and its replicas (on a Redis Cluster every node: the sessions' slot
    may be on any primary, and its replicas have a feed of their own)."""
    env = world.ctx.env
    if env.redis_cluster:
        return [t.id for t in env.redis]
    return [world.store_node, *(r for r, m in env.replicas.items() if m == world.store_node)]


async def _notifications_off(world: World) -> None:
    ctx = world.ctx
    nodes = _notification_nodes(world)
    for node in nodes:
        client = redis_client(ctx.env.target(node))
        try:
            reply = await client.config_get("notify-keyspace-events")
            world.notifications.setdefault(node, str(next(iter(reply.values()), "")))
            await client.config_set("notify-keyspace-events", "")
        finally:
            await client.aclose()
    world.off_since = time.monotonic()
    was = ", ".join(f"{n} {v!r}" for n, v in world.notifications.items())
    ctx.record(
        NEMESIS,
        "info",
        "fault",
        value="notifications-off",
        note=f'CONFIG SET notify-keyspace-events "" on {", ".join(nodes)} (was {was})',
    )


async def restore_notifications(world: World, wait: bool = False) -> None:
    """Put notify-keyspace-events back as it was (after ``fault_ms`` at least, when asked to wait)."""
    if not world.notifications:
        return
    ctx = world.ctx
    if wait and world.off_since is not None:
        rest = ctx.number("fault_ms") / 1000 - (time.monotonic() - world.off_since)
        if rest > 0:
            await asyncio.sleep(rest)
    off_s = time.monotonic() - world.off_since if world.off_since is not None else 0
    restored = []
    for node, flags in list(world.notifications.items()):
        client = redis_client(ctx.env.target(node))
        try:
            await client.config_set("notify-keyspace-events", flags)
            restored.append(f"{node} {flags!r}")
            del world.notifications[node]
        except Exception:
            pass  # left in the map: the run's end tries again
        finally:
            await client.aclose()
    if restored:
        note = (
            f"keyspace notifications were off for {off_s:.1f} s: every viewer had to find the "
            f"sessions' changes by scanning; restored ({', '.join(restored)})"
        )
        ctx.record(NEMESIS, "info", "heal", value="notifications-off", note=note)
        ctx.record(RUNNER, "info", "notifications", note=note)


async def _rotate(world: World, user: str, browser: Http) -> None:
    """Log out, visit anonymously, log in again: does the pre-login id still open the session?"""
    ctx = world.ctx
    rotate = ctx.choice("rotate") == "on"
    ctx.record(
        NEMESIS,
        "info",
        "fault",
        value="rotate-id",
        note=f"{user} logs in again from a pre-login session (rotate={'on' if rotate else 'off'})",
    )
    await request(world, user, browser, "logout")
    visit = await request(world, user, browser, "visit")
    before = str(visit.body.get("session", "")) if visit.ok else ""
    again = await login(world, user, browser, rotate=rotate)
    after = str(again.body.get("session", "")) if again.ok else ""
    if before:
        attacker = Http(connections=1, cookies={COOKIE: cookie_value(before)})
        try:
            await request(world, checker.ATTACKER, attacker, "browse")
        finally:
            await attacker.aclose()
        await _old_keys(world, before, after)
    ctx.record(NEMESIS, "info", "heal", value="rotate-id", note=f"{user}: {before or '?'} → {after or '?'}")


async def _old_keys(world: World, before: str, after: str) -> None:
    """Read the store: are the pre-login id's keys gone?"""
    ctx = world.ctx
    keys = world.sessions.keys(before)
    if not keys:
        return  # in a process's memory: the attacker's probe is all there is to ask
    left = [k for k in keys if await world.store.exists(k)]
    if before == after or left:
        ctx.record(
            RUNNER,
            "fail",
            "old-id",
            value=before,
            note=f"login kept the pre-login id {before}: {', '.join(left) or 'the same id'} still there",
        )
    else:
        ctx.record(
            RUNNER,
            "ok",
            "old-id",
            value=before,
            note=f"rotate-id: the pre-login id {before} is gone from the store, the session is now {after}",
        )
