"""Start scenario runs, steer them while they run, and record how they ended.

A run is an asyncio task in the process that started it (the CLI, the web
server or the TUI). Everything about it that anyone else needs goes through
the stores:

- its status, parameters, actors and verdict in ``coordscope:run:<id>``;
- its operations in ``coordscope:history:<id>``;
- faults and stop requests for it arrive in ``coordscope:commands:<id>``
  (a list the run pops), so a browser can inject a fault into a run started
  from a terminal on another machine.

When the scenario ends (or fails, or is stopped) the run writes its verdict
and status, deletes the keys its scenario registered for cleanup (unless
``keep=on``) and lets its narration expire after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collectors.events import Verdict
from collectors.layouts import coordscope
from collectors.runs import Op
from collectors.targets import RedisTarget, ZkTarget
from scenarios import lock_compare, lock_failover, lock_redis, lock_redlock, lock_zk
from scenarios.catalogue import ScenarioError, ScenarioSpec
from scenarios.history import History, RunRecord

SCENARIOS: dict[str, ModuleType] = {
    m.SPEC.name: m for m in (lock_redis, lock_failover, lock_redlock, lock_zk, lock_compare)
}


def catalogue() -> list[ScenarioSpec]:
    return [m.SPEC for m in SCENARIOS.values()]


def spec_of(name: str) -> ScenarioSpec:
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return SCENARIOS[name].SPEC  # type: ignore[no-any-return]


class Closable(Protocol):
    async def aclose(self) -> None: ...


C = TypeVar("C", bound=Closable)


class ClusterControl(Protocol):
    """What fault injection may do to the embedded cluster's processes."""

    def kill(self, name: str) -> Any: ...
    def restart(self, name: str) -> Any: ...
    def pause(self, name: str) -> Any: ...
    def resume(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Environment:
    """Where runs happen: the nodes, which ones are masters, and who can signal them."""

    redis: tuple[RedisTarget, ...]
    masters: tuple[str, ...]
    zookeeper: tuple[ZkTarget, ...] = ()
    control: str = ""
    """The Redis node runs narrate to (by default the last master)."""
    cluster: ClusterControl | None = None
    writable: bool = True
    """False when watching a cluster we do not own without --allow-writes."""
    replicas: dict[str, str] = field(default_factory=dict)
    """Replica node -> its master (the local cluster's replica-1 -> redis-1)."""

    def target(self, node_id: str) -> RedisTarget:
        for t in self.redis:
            if t.id == node_id:
                return t
        raise ScenarioError(f"no Redis node {node_id!r}")

    def client(self, node_id: str) -> Redis:
        t = self.target(node_id)
        # No silent retries: a lock service that is down must show in the history as errors
        # when they happen, not as one call that hangs through the whole outage.
        return Redis(
            host=t.host,
            port=t.port,
            db=t.db,
            username=t.username,
            password=t.password,
            ssl=t.tls,
            protocol=2,
            socket_connect_timeout=1.0,
            socket_timeout=3.0,
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def control_node(self) -> str:
        return self.control or self.masters[-1]


@dataclass
class RunContext:
    """What a scenario gets: its parameters, its history, its clients, its faults."""

    run_id: str
    spec: ScenarioSpec
    params: dict[str, str | int]
    faults: list[str]
    history: History
    env: Environment
    live_faults: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    actors: list[str] = field(default_factory=list)
    _closing: list[Closable] = field(default_factory=list)
    _cleanup: list[tuple[str, str]] = field(default_factory=list)
    _record: RunRecord | None = None
    reported_violation: bool = False

    def number(self, name: str) -> int:
        return int(self.params[name])

    def choice(self, name: str) -> str:
        return str(self.params[name])

    def client(self, node_id: str) -> Redis:
        """A client of its own on a node (closed when the run ends)."""
        return self.closing(self.env.client(node_id))

    def closing(self, thing: C) -> C:
        """Close this when the run ends (after the cleanup; the last registered first)."""
        self._closing.append(thing)
        return thing

    def record(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        return self.history.record(actor, kind, f, **kw)

    def cleanup(self, node_id: str, *keys: str) -> None:
        for key in keys:
            if not key.startswith(coordscope.PREFIX):
                raise ValueError(f"scenarios write only under {coordscope.PREFIX}: {key!r}")
            self._cleanup.append((node_id, key))

    async def set_table(self, rows: list[list[str]]) -> None:
        """Publish the scenario's own table (a header row first) with the run."""
        if self._record is not None:
            await self._record.update(table=rows)

    async def set_actors(self, actors: list[str]) -> None:
        self.actors = actors
        if self._record is not None:
            await self._record.update(actors=actors)


@dataclass
class LocalRun:
    id: str
    spec: ScenarioSpec
    context: RunContext
    task: asyncio.Task[None] | None = None
    status: str = "running"
    verdict: Verdict | None = None
    error: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


def new_run_id(scenario: str) -> str:
    return f"{scenario}-{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"


class Runner:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.runs: dict[str, LocalRun] = {}

    def validate(
        self, scenario: str, params: dict[str, str], faults: list[str]
    ) -> tuple[ScenarioSpec, dict[str, str | int], list[str]]:
        spec = spec_of(scenario)
        resolved = spec.resolve(params)
        for name in faults:
            self._check_fault(spec, name)
        if not self.env.writable:
            raise ScenarioError(
                "this cluster is watched read-only: scenarios write to it, so "
                "start coordscope with --allow-writes to run them here"
            )
        if not self.env.masters:
            raise ScenarioError("no Redis master to run on")
        return spec, resolved, list(dict.fromkeys(faults))

    def _check_fault(self, spec: ScenarioSpec, name: str) -> None:
        fault = spec.fault(name)
        if fault.needs_local_cluster and self.env.cluster is None:
            raise ScenarioError(
                f"{name} signals server processes, so it needs the local cluster "
                "(coordscope up); coordscope never signals processes it did not start"
            )

    async def start(
        self,
        scenario: str,
        params: dict[str, str] | None = None,
        faults: list[str] | None = None,
        echo: Callable[[Op], None] | None = None,
    ) -> LocalRun:
        spec, resolved, fault_list = self.validate(scenario, params or {}, faults or [])
        run_id = new_run_id(spec.name)
        control = self.env.client(self.env.control_node)
        record = RunRecord(control, run_id)
        try:
            await record.create(
                spec.name, resolved, fault_list, owner=f"{socket.gethostname()}:{os.getpid()}"
            )
        except (redis_errors.RedisError, OSError) as exc:
            await control.aclose()
            raise ScenarioError(
                f"cannot start: the control node {self.env.control_node} is unreachable ({exc})"
            ) from None
        history = History(control, run_id, echo)
        history.start()
        ctx = RunContext(
            run_id=run_id,
            spec=spec,
            params=resolved,
            faults=fault_list,
            history=history,
            env=self.env,
            _record=record,
        )
        run = LocalRun(id=run_id, spec=spec, context=ctx)
        self.runs[run_id] = run
        run.task = asyncio.create_task(self._drive(run, control, record), name=f"run {run_id}")
        return run

    async def _drive(self, run: LocalRun, control: Redis, record: RunRecord) -> None:
        ctx = run.context
        background = (asyncio.create_task(self._commands(run)), asyncio.create_task(record.heartbeat()))

        module = SCENARIOS[run.spec.name]
        try:
            verdict: Verdict = await module.run(ctx)
            run.verdict = verdict
            run.status = "stopped" if ctx.stopping.is_set() else ("held" if verdict.holds else "violated")
        except ScenarioError as exc:
            run.status, run.error = "error", str(exc)
        except (redis_errors.RedisError, OSError) as exc:
            run.status, run.error = "error", f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            run.status, run.error = "stopped", "cancelled"
        except Exception as exc:  # a bug in a scenario must still end the run visibly
            run.status, run.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            try:
                await self._finish(run, control, record, background)
            finally:
                run.done.set()  # whoever waits for the run must never wait for ever

    async def _finish(
        self, run: LocalRun, control: Redis, record: RunRecord, background: tuple[asyncio.Task[None], ...]
    ) -> None:
        """Write how the run ended, clean up its keys, close its connections."""
        ctx = run.context
        for task in background:  # the command reader and the heartbeat
            task.cancel()
        await asyncio.wait(background, timeout=3.0)  # bounded: the run's end must not hang on them
        ctx.record("runner", "info", "end", note=run.status)
        await ctx.history.close()
        verdict_json = dataclasses.asdict(run.verdict) if run.verdict else None
        await record.finish(run.status, verdict_json, run.error)
        if ctx.params.get("keep") != "on":
            await _cleanup(ctx)
        for c in reversed(ctx._closing):
            with contextlib.suppress(Exception):
                await c.aclose()
        with contextlib.suppress(Exception):
            await control.aclose()

    async def _commands(self, run: LocalRun) -> None:
        """Pop fault and stop requests for this run from the store."""
        client = self.env.client(self.env.control_node)
        key = coordscope.commands_key(run.id)
        try:
            while True:
                try:
                    item = await client.blpop([key], timeout=0.5)
                except (redis_errors.RedisError, OSError):
                    await asyncio.sleep(0.5)
                    continue
                if item is None:
                    continue
                try:
                    command = json.loads(item[1])
                except ValueError:
                    continue
                if command.get("stop"):
                    run.context.stopping.set()
                    run.context.record("runner", "info", "stop", note="stop requested")
                elif isinstance(command.get("fault"), str):
                    name = command["fault"]
                    try:
                        self._check_fault(run.spec, name)
                    except ScenarioError as exc:
                        run.context.record("runner", "info", "fault-refused", note=str(exc))
                        continue
                    run.context.live_faults.put_nowait(name)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def request_fault(self, run_id: str, scenario: str, fault: str) -> None:
        """Ask a running run (here or in another process) to take a fault now."""
        spec = spec_of(scenario)
        self._check_fault(spec, fault)
        if not spec.live_faults:
            raise ScenarioError(f"{scenario} takes its faults at start only (--fault {fault})")
        await self._command(run_id, {"fault": fault})

    async def request_stop(self, run_id: str) -> None:
        await self._command(run_id, {"stop": True})

    async def _command(self, run_id: str, command: dict[str, Any]) -> None:
        client = self.env.client(self.env.control_node)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.rpush(coordscope.commands_key(run_id), json.dumps(command))
            pipe.expire(coordscope.commands_key(run_id), 3600)
            await pipe.execute()
        except (redis_errors.RedisError, OSError) as exc:
            raise ScenarioError(f"the control node {self.env.control_node} is unreachable ({exc})") from None
        finally:
            await client.aclose()

    async def wait(self, run_id: str) -> LocalRun:
        run = self.runs[run_id]
        await run.done.wait()
        return run

    async def close(self) -> None:
        """Stop every run of ours (at shutdown): each still writes its final status."""
        for run in self.runs.values():
            if run.task is not None and not run.task.done():
                run.task.cancel()
        for run in self.runs.values():
            if run.task is not None:
                with contextlib.suppress(BaseException):
                    await run.task


async def _cleanup(ctx: RunContext) -> None:
    by_node: dict[str, list[str]] = {}
    for node_id, key in ctx._cleanup:
        by_node.setdefault(node_id, []).append(key)
    for node_id, keys in by_node.items():
        client = ctx.env.client(node_id)
        try:
            for _ in range(20):
                try:
                    await client.delete(*keys)
                    break
                except (redis_errors.RedisError, OSError):
                    await asyncio.sleep(0.25)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
