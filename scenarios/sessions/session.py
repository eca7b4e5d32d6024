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
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER, Verdict
from collectors.targets import free_port
from scenarios.kit.balancer import Backend, Balancer, BalancerError
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.scenario import Scenario
from scenarios.sessions import checker
from scenarios.sessions.app import store_for
from scenarios.sessions.faults import FAULTS, restore_notifications, strike
from scenarios.sessions.stores import STORES
from scenarios.sessions.world import BALANCER, World, login, request

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
    redis = ctx.client(node)
    world = World(ctx, balancer, services, node, redis, store_for(store, redis, ctx.run_id))
    ctx.at_end(lambda: restore_notifications(world))
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
        await restore_notifications(world, wait=True)
    finally:
        for task in world.down.values():
            task.cancel()
        await asyncio.gather(*world.down.values(), return_exceptions=True)
        await balancer.stop()
        await control.delete(coordscope.service_key(ctx.run_id, BALANCER))
        ctx.record(RUNNER, "info", "drain", note="the instances stop")
        await ctx.services.stop_all()
        await _table(world)


async def _user(world: World, user: str, plan: FaultPlan) -> None:
    ctx = world.ctx
    browser = Http(connections=2)
    think = random.Random(f"{ctx.number('seed')}:{user}")  # users drift apart: each meets every instance
    try:
        await login(world, user, browser)
        for i in range(ctx.number("requests")):
            if ctx.stopping.is_set():
                break
            if user == "user-1":
                plan.step()
                fault = plan.take()
                if fault is not None:
                    await strike(world, user, browser, fault)
            if i % 2:
                await request(world, user, browser, "cart", {"item": f"{user}:item-{i}"})
            else:
                await request(world, user, browser, "browse")
            await asyncio.sleep(think.uniform(0.5, 1.5) * ctx.number("think_ms") / 1000)
        await request(world, user, browser, "logout")
    finally:
        await browser.aclose()


async def _balancer_beat(world: World, control: Redis) -> None:
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


async def _table_beat(world: World) -> None:
    while True:
        await _table(world)
        await asyncio.sleep(0.5)


async def _table(world: World) -> None:
    """Each user as the history tells it (the checker's own accounts): ✘ a logout before the
    idle timeout."""
    rows = [["user", "logged in", "requests ok", "served by", "logged out by the app", "cart"]]
    for user, a in sorted(world.accounts().items()):
        premature = a.kicked > a.expired
        rows.append(
            [
                user,
                "yes" if a.logged_in else "no",
                str(a.ok),
                ", ".join(sorted(a.instances)) or "–",
                str(a.kicked) + (" ✘" if premature else ""),
                str(a.cart),
            ]
        )
    await world.ctx.set_table(rows)


def check(ops: Any, params: Any) -> Verdict:
    return checker.check(ops, params)


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
