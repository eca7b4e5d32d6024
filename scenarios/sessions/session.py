"""``session``: one login, many app instances, behind a real HAProxy.

The seed's fourth section. Users log in, browse and fill a cart through HAProxy
(:mod:`scenarios.kit.balancer`, round robin, health checks), which spreads their
requests over app instances — real processes (:mod:`scenarios.sessions.app`). Where
the session lives is the variant (``store``):

- ``local``: in each instance's memory — the next instance does not know the user;
- ``sticky``: the same, with HAProxy's cookie stickiness — fine until the instance dies;
- ``container``: one opaque blob per session in Redis, as a container-coupled
  manager (Tomcat's Redis valve) writes it — any instance of that container reads it;
- ``redis`` (default): Spring Session's Redis layout in the namespace
  ``coordscope:session:{<run>}`` — readable fields any instance, in any container,
  shares, and so does a Spring Session app pointed at that namespace.

Faults strike at user-1's ``fault_at``-th request (or its next one, injected live):

- ``kill-instance``: SIGKILL of the instance that served user-1 last; HAProxy routes
  around it once its health checks fail; it is started again ``fault_ms`` later;
- ``expire``: user-1 goes idle past the timeout; the run watches the session's key
  expire (Redis's ``expired`` event) and says how long after its TTL ended it came;
- ``notifications-off``: ``CONFIG SET notify-keyspace-events ""`` on the session node
  and its replicas, for at least ``fault_ms`` and to the end of the run (then
  restored): every viewer has to find the changes by scanning, and says so;
- ``redis-restart-no-persistence``: the session node SIGKILLed and started empty;
- ``rotate-id``: user-1 logs out, visits anonymously (a pre-login session) and logs
  in again; with ``rotate=on`` the id changes at login. An attacker then replays the
  pre-login id (session fixation), and the run reads whether its keys are gone.

The verdict (:mod:`scenarios.sessions.checker`) judges the users' history.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER, Verdict
from collectors.targets import free_port
from scenarios.kit.balancer import Backend, Balancer, BalancerError
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.clients import redis_client
from scenarios.kit.context import RunContext
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http, Reply
from scenarios.kit.nemesis import outage
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service
from scenarios.sessions import checker
from scenarios.sessions.app import COOKIE, cookie_value, session_of_cookie
from scenarios.sessions.stores import STORES, ContainerStore, SpringStore

FAULTS = ("kill-instance", "expire", "notifications-off", "redis-restart-no-persistence", "rotate-id")
BALANCER = "haproxy"
REQUEST_TIMEOUT_S = 5.0

SPEC = ScenarioSpec(
    name="session",
    title="One login, many app instances",
    summary="Users log in, browse and fill a cart through HAProxy over three app processes; the session "
    "lives in each instance's memory (local, sticky), in one opaque blob per session (container) or in "
    "Spring Session's Redis layout (redis).",
    invariant=checker.INVARIANT,
    params=(
        Param(
            "store",
            "redis",
            "where the session lives: redis (Spring Session), container, sticky, local",
            choices=STORES,
        ),
        Param("users", "3", "users logged in at once", minimum=1, maximum=20),
        Param("instances", "3", "app processes behind HAProxy", minimum=2, maximum=6),
        Param("idle_s", "10", "the idle timeout of a session (short for the demo)", minimum=2, maximum=3600),
        Param("requests", "12", "requests each user makes after logging in", minimum=1, maximum=500),
        Param("think_ms", "250", "a user's pause between requests", minimum=0, maximum=60_000),
        Param("rotate", "on", "does login change the session id (against fixation)?", choices=("on", "off")),
        Param(
            "fault_ms",
            "3000",
            "how long an instance stays down, notifications off (at least)",
            minimum=100,
            maximum=120_000,
        ),
        Param(
            "check_ms",
            "300",
            "HAProxy's health-check interval (down after 2 failures)",
            minimum=100,
            maximum=10_000,
        ),
        Param("seed", "1", "seed of the users' think-time jitter (±50%)", minimum=0, maximum=2**31),
        Param(
            "fault_at", "4", "which of user-1's requests a fault given at start hits", minimum=1, maximum=500
        ),
    ),
    faults=(
        FaultSpec("kill-instance", "SIGKILL the instance that served user-1 last (HAProxy routes around it)"),
        FaultSpec("expire", "user-1 goes idle past the timeout: watch the expiry arrive, and its delay"),
        FaultSpec("notifications-off", 'notify-keyspace-events "" on the session node: viewers must scan'),
        FaultSpec(
            "redis-restart-no-persistence",
            "the session node restarts empty: every session lost",
            needs_local_cluster=True,
        ),
        FaultSpec(
            "rotate-id", "user-1 logs in again from a pre-login session; an attacker replays the old id"
        ),
    ),
    show="the sessions (user, layout, instance of the last request, last access, idle TTL, attributes), "
    "HAProxy and the instances, a lane per user with each request coloured by its instance",
    sources=(
        "the seed: Tomcat + Redis (container-coupled) vs Spring Session + Redis",
        "Spring Session: RedisIndexedSessionRepository's key layout and commands",
        "HAProxy: balance roundrobin, option httpchk, cookie insert (sticky sessions)",
    ),
)


@dataclass
class _World:
    """What the users and the nemesis share in one run."""

    ctx: RunContext
    balancer: Balancer
    services: list[Service]
    store_node: str
    store: Redis
    last_served: dict[str, str] = field(default_factory=dict)
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notifications: dict[str, str] = field(default_factory=dict)
    """Node -> its notify-keyspace-events before notifications-off (restored at the end)."""
    off_since: float | None = None
    requests: int = 0
    down: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Killed instances waiting to be started again."""

    @property
    def idle_ms(self) -> int:
        return self.ctx.number("idle_s") * 1000


async def run(ctx: RunContext) -> None:
    if "redis-restart-no-persistence" in ctx.faults and (ctx.env.cluster is None or ctx.env.redis_cluster):
        raise ScenarioError(
            "redis-restart-no-persistence restarts the session node of the local cluster "
            "(not on a Redis Cluster: its replicas would take over)"
        )
    store = ctx.choice("store")
    node = ctx.env.masters[0]
    instances = [f"app-{i + 1}" for i in range(ctx.number("instances"))]
    users = [f"user-{i + 1}" for i in range(ctx.number("users"))]
    await ctx.set_actors([*users, checker.ATTACKER, NEMESIS])
    ctx.cleanup_matching(node, f"{coordscope.session_namespace(ctx.run_id)}:*")
    args = ["--store", store, "--redis", ctx.env.target(node).url, "--idle-s", str(ctx.number("idle_s"))]
    module = "scenarios.sessions.app"
    services = list(
        await asyncio.gather(*(ctx.services.start(n, "app-instance", module, args) for n in instances))
    )
    balancer = Balancer(
        ctx.services.folder / BALANCER,
        free_port(),
        [Backend(s.name, "127.0.0.1", s.port) for s in services],
        sticky=store == "sticky",
        check_ms=ctx.number("check_ms"),
        owner=ctx.run_id,
    )
    try:
        await balancer.start()
    except BalancerError as exc:
        raise ScenarioError(str(exc)) from None
    world = _World(ctx, balancer, services, node, ctx.client(node))
    ctx.at_end(lambda: _restore_notifications(world))
    control = ctx.client(ctx.env.control_node)
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"store={store}: HAProxy on {balancer.address} ({'sticky, ' if store == 'sticky' else ''}"
        f"round robin) over {', '.join(f'{s.name} {s.address}' for s in services)}; "
        + ("sessions in each instance's memory" if store in ("local", "sticky") else f"sessions on {node}"),
    )
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    try:
        work = [_user(world, u, plan) for u in users]
        await with_helpers(ctx, plan.arm, work, _balancer_beat(world, control), _table_beat(world))
        for fault in [*plan.armed, *plan.scheduled]:  # user-1 was done before it came due
            ctx.record(RUNNER, "info", "fault-unused", value=fault,
                       note=f"{fault} came after user-1's last request: not applied")  # fmt: skip
        await _restore_notifications(world, wait=True)
    finally:
        for task in world.down.values():
            task.cancel()
        await asyncio.gather(*world.down.values(), return_exceptions=True)
        await balancer.stop()
        await control.delete(coordscope.service_key(ctx.run_id, BALANCER))
        ctx.record(RUNNER, "info", "drain", note="the instances stop")
        await ctx.services.stop_all()
        await _table(world)


async def _user(world: _World, user: str, plan: FaultPlan) -> None:
    ctx = world.ctx
    browser = Http(connections=2)
    think = random.Random(f"{ctx.number('seed')}:{user}")  # users drift apart: each meets every instance
    world.counts[user] = {"ok": 0, "kicked": 0, "instances": set(), "cart": 0, "in": False}
    try:
        await _login(world, user, browser)
        for i in range(ctx.number("requests")):
            if ctx.stopping.is_set():
                break
            if user == "user-1":
                plan.step()
                fault = plan.take()
                if fault is not None:
                    await _fault(world, user, browser, fault)
            if i % 2:
                await _request(world, user, browser, "cart", {"item": f"{user}:item-{i}"})
            else:
                await _request(world, user, browser, "browse")
            await asyncio.sleep(think.uniform(0.5, 1.5) * ctx.number("think_ms") / 1000)
        await _request(world, user, browser, "logout")
    finally:
        await browser.aclose()


async def _login(world: _World, user: str, browser: Http, rotate: bool = False) -> Reply:
    body = {"user": user, "rotate": rotate}
    for _ in range(20):  # an unanswered login (a restart, a 503) is tried again
        reply = await _request(world, user, browser, "login", body)
        if reply.ok or world.ctx.stopping.is_set():
            return reply
        await asyncio.sleep(0.2)
    return reply


async def _request(
    world: _World, user: str, browser: Http, path: str, body: dict[str, Any] | None = None
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
    count = world.counts.setdefault(user, {"ok": 0, "kicked": 0, "instances": set(), "cart": 0, "in": False})
    if reply.ok:
        seen, cart = reply.body.get("user"), reply.body.get("cart") or []
        data |= {"user": seen, "cart": cart, "session": reply.body.get("session")}
        tick = {"login": "login", "logout": "logout"}.get(path)
        if user != checker.ATTACKER and path not in ("visit", "logout") and seen != user:
            tick = "leak"
        if tick:
            data["tick"] = tick
        world.last_served[user] = served
        count["ok"] += 1
        count["instances"].add(served)
        count["cart"] = len(cart)
        count["in"] = path != "logout" and (path != "visit" or count["in"])
        note = (
            f"{path}: {reply.status} by {served}"
            + (f": {seen}" if seen else "")
            + (f", cart {len(cart)}" if cart else "")
        )
        ctx.record(user, "ok", "request", key=path, note=note, data=data)
        return reply
    if reply.status == 401:
        count["kicked"] += 1
        count["in"] = False
        ctx.record(
            user,
            "fail",
            "request",
            key=path,
            note=f"{path}: 401 not logged in (by {served})",
            data=data | {"tick": "kicked"},
        )
        if user != checker.ATTACKER and path in ("browse", "cart") and not ctx.stopping.is_set():
            await _login(world, user, browser)
        return reply
    if reply.status is not None:
        error = str(reply.body.get("error") or reply.body.get("text", ""))[:80]
        kind, note, tick = "fail", f"{reply.status} {error}".strip(), "error"
    else:
        kind, note, tick = "info", f"no reply ({reply.error})", "timeout"
    ctx.record(user, kind, "request", key=path, note=note, data=data | {"tick": tick})
    return reply


async def _fault(world: _World, user: str, browser: Http, fault: str) -> None:
    ctx = world.ctx
    if fault == "kill-instance":
        victim = world.last_served.get(user) or world.services[0].name
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


async def _bring_back(world: _World, name: str) -> None:
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


def _ttl_key(world: _World, session_id: str) -> str | None:
    """The key whose expiry is the session's: Spring's shadow, the container's blob."""
    store, run_id = world.ctx.choice("store"), world.ctx.run_id
    if store == "redis":
        return SpringStore(world.store, run_id).expires_key(session_id)
    if store == "container":
        return ContainerStore(world.store, run_id).key(session_id)
    return None


async def _expire(world: _World, user: str, browser: Http) -> None:
    """The user goes idle past the timeout; the session's key expiring is watched."""
    ctx = world.ctx
    session_id = session_of_cookie(browser.cookie(COOKIE))
    key = _ttl_key(world, session_id) if session_id else None
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


async def _watch_expiry(world: _World, user: str, key: str, wait_s: float) -> None:
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


async def _expired_at(world: _World, key: str, timeout_s: float) -> tuple[float | None, str]:
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


def _notification_nodes(world: _World) -> list[str]:
    """The session node and its replicas (on a Redis Cluster every node: the sessions' slot
    may be on any primary, and its replicas have a feed of their own)."""
    env = world.ctx.env
    if env.redis_cluster:
        return [t.id for t in env.redis]
    return [world.store_node, *(r for r, m in env.replicas.items() if m == world.store_node)]


async def _notifications_off(world: _World) -> None:
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


async def _restore_notifications(world: _World, wait: bool = False) -> None:
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


async def _rotate(world: _World, user: str, browser: Http) -> None:
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
    await _request(world, user, browser, "logout")
    visit = await _request(world, user, browser, "visit")
    before = str(visit.body.get("session", "")) if visit.ok else ""
    login = await _login(world, user, browser, rotate=rotate)
    after = str(login.body.get("session", "")) if login.ok else ""
    if before:
        attacker = Http(connections=1, cookies={COOKIE: cookie_value(before)})
        try:
            await _request(world, checker.ATTACKER, attacker, "browse")
        finally:
            await attacker.aclose()
        await _old_keys(world, before, after)
    ctx.record(NEMESIS, "info", "heal", value="rotate-id", note=f"{user}: {before or '?'} → {after or '?'}")


async def _old_keys(world: _World, before: str, after: str) -> None:
    """Read the store: are the pre-login id's keys gone?"""
    ctx = world.ctx
    store = ctx.choice("store")
    if store in ("local", "sticky"):
        return
    if store == "redis":
        spring = SpringStore(world.store, ctx.run_id)
        keys = [spring.hash_key(before), spring.expires_key(before)]
    else:
        keys = [ContainerStore(world.store, ctx.run_id).key(before)]
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


async def _balancer_beat(world: _World, control: Redis) -> None:
    """HAProxy on the services panel: registered like a service, its servers as it sees them."""
    ctx, balancer = world.ctx, world.balancer
    key = coordscope.service_key(ctx.run_id, BALANCER)
    started = str(int(time.time() * 1000))
    while True:
        servers = await balancer.servers()
        now = str(int(time.time() * 1000))
        fields = {
            "name": BALANCER,
            "role": "balancer",
            "address": balancer.address,
            "pid": str(balancer.pid or ""),
            "status": "up" if servers else "down",
            "alive_ms": now,
            "started_ms": started,
            "requests": str(sum(s.sessions for s in servers)),
            "run": ctx.run_id,
            "last_request": "",
            "last_request_ms": "0",
            "detail": " · ".join(f"{s.name} {s.status}" for s in servers),
        }
        with contextlib.suppress(Exception):
            await control.hset(key, mapping=fields)  # type: ignore[arg-type]
            await control.pexpire(key, 30_000)
        await asyncio.sleep(0.5)


async def _table_beat(world: _World) -> None:
    while True:
        await _table(world)
        await asyncio.sleep(0.5)


async def _table(world: _World) -> None:
    rows = [["user", "logged in", "requests ok", "served by", "logged out by the app", "cart"]]
    for user, c in sorted(world.counts.items()):
        if user == checker.ATTACKER:
            continue
        rows.append(
            [
                user,
                "yes" if c["in"] else "no",
                str(c["ok"]),
                ", ".join(sorted(c["instances"])) or "–",
                str(c["kicked"]) + (" ✘" if c["kicked"] else ""),
                str(c["cart"]),
            ]
        )
    await world.ctx.set_table(rows)


def check(ops: Any, params: Any) -> Verdict:
    return checker.check(ops, params)


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
