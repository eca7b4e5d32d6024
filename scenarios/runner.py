"""Start scenario runs, steer them while they run, and judge how they ended.

A run is an asyncio task in the process that started it (the CLI, the web
server or the TUI), plus the processes its scenario starts and a janitor
process of its own. Everything about it that anyone else needs goes through
the stores:

- its status, parameters, actors, heartbeat, cleanup plan and verdict in
  ``coordscope:run:<id>``;
- its operations in ``coordscope:history:<id>``, written by the run and by
  its services;
- faults and stop requests for it arrive in ``coordscope:commands:<id>``
  (a list the run pops), so a browser can inject a fault into a run started
  from a terminal on another machine.

When the scenario ends (or fails, or is stopped) the run stops its services,
writes the last of its history, reads the whole history back from the store
with the collectors' reader and checks that it holds every operation the
run recorded — then the scenario's checker judges what was read back (what
every viewer sees), and the run writes its verdict and status, deletes what
it created (unless ``keep=on``) and lets its narration expire after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import RUNNER, Op, Verdict
from collectors.targets import TargetError
from scenarios.kit.catalogue import ScenarioError, ScenarioSpec
from scenarios.kit.cleanup import carry_out
from scenarios.kit.context import ClusterControl, Environment, RunContext
from scenarios.kit.history import History, RunRecord
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import ServiceSet, runs_dir
from scenarios.registry import catalogue, scenario

__all__ = ["ClusterControl", "Environment", "LocalRun", "RunContext", "Runner", "catalogue", "spec_of"]


def spec_of(name: str) -> ScenarioSpec:
    return scenario(name).spec


@dataclass
class LocalRun:
    id: str
    spec: ScenarioSpec
    context: RunContext
    task: asyncio.Task[None] | None = None
    status: str = "running"
    verdict: Verdict | None = None
    error: str = ""
    stored: list[Op] = field(default_factory=list)
    """The history as read back from the store at the end (what was judged)."""
    janitor: subprocess.Popen[bytes] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


def new_run_id(scenario_name: str) -> str:
    return f"{scenario_name}-{time.strftime('%H%M%S')}-{secrets.token_hex(2)}"


class Runner:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.runs: dict[str, LocalRun] = {}

    def validate(
        self, scenario_name: str, params: dict[str, str], faults: list[str]
    ) -> tuple[Scenario, dict[str, str | int], list[str]]:
        found = scenario(scenario_name)
        resolved = found.spec.resolve(params)
        for name in faults:
            self._check_fault(found.spec, name)
        if not self.env.writable:
            raise ScenarioError(
                "this cluster is watched read-only: scenarios write to it, so "
                "start coordscope with --allow-writes to run them here"
            )
        if not self.env.masters:
            raise ScenarioError("no Redis master to run on")
        if self.env.redis_cluster and found.spec.not_on_redis_cluster:
            raise ScenarioError(
                f"{found.name} cannot run on a Redis Cluster: {found.spec.not_on_redis_cluster}"
            )
        if "zookeeper" in found.spec.needs and not self.env.zookeeper:
            raise ScenarioError(f"{found.name} needs a ZooKeeper (none is configured)")
        if "postgres" in found.spec.needs:
            self.env.database(found.name)
        return found, resolved, list(dict.fromkeys(faults))

    def _check_fault(self, spec: ScenarioSpec, name: str) -> None:
        fault = spec.fault(name)
        if fault.needs_local_cluster and self.env.cluster is None:
            raise ScenarioError(
                f"{name} signals server processes, so it needs the local cluster "
                "(coordscope up); coordscope never signals processes it did not start"
            )

    KEEP_FINISHED = 20
    """Finished runs this process remembers (everyone else reads them from the store)."""

    def _prune(self) -> None:
        """Reap the janitors that left, and forget all but the latest finished runs."""
        finished = [r for r in self.runs.values() if r.done.is_set()]
        for run in finished:
            if run.janitor is not None and run.janitor.poll() is not None:
                run.janitor = None
        for run in finished[: -self.KEEP_FINISHED]:
            if run.janitor is None:
                del self.runs[run.id]

    async def start(
        self,
        scenario_name: str,
        params: dict[str, str] | None = None,
        faults: list[str] | None = None,
    ) -> LocalRun:
        self._prune()
        found, resolved, fault_list = self.validate(scenario_name, params or {}, faults or [])
        spec = found.spec
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
        history = History(control, run_id)
        history.start()
        control_url = self.env.target(self.env.control_node).url
        services = ServiceSet(run_id, control_url, history.t0, control=control, record=history.record)
        ctx = RunContext(
            run_id=run_id,
            spec=spec,
            params=resolved,
            faults=fault_list,
            history=history,
            env=self.env,
            services=services,
            record_=record,
        )
        run = LocalRun(id=run_id, spec=spec, context=ctx)
        run.janitor = _janitor(run_id, control_url)
        if found.live is not None:
            found.live(ctx)
        self.runs[run_id] = run
        run.task = asyncio.create_task(self._drive(run, found, control, record), name=f"run {run_id}")
        return run

    async def _drive(self, run: LocalRun, found: Scenario, control: Redis, record: RunRecord) -> None:
        ctx = run.context
        plan = {"cleanup": ""}

        def changed_plan() -> dict[str, str]:
            now = ctx.plan.to_json()
            if now == plan["cleanup"]:
                return {}
            plan["cleanup"] = now
            return {"cleanup": now}

        background = (
            asyncio.create_task(self._commands(run)),
            asyncio.create_task(record.heartbeat(changed_plan, ctx.plan_changed)),
        )
        completed = False
        try:
            await found.run(ctx)
            completed = True
        except (ScenarioError, TargetError) as exc:
            run.status, run.error = "error", str(exc)
        except (redis_errors.RedisError, OSError) as exc:
            run.status, run.error = "error", f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            run.status, run.error = "stopped", "cancelled"
        except Exception as exc:  # a bug in a scenario must still end the run visibly
            run.status, run.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            try:
                await self._finish(run, found, control, record, background, completed)
            finally:
                run.done.set()  # whoever waits for the run must never wait for ever

    async def _finish(
        self,
        run: LocalRun,
        found: Scenario,
        control: Redis,
        record: RunRecord,
        background: tuple[asyncio.Task[None], ...],
        completed: bool,
    ) -> None:
        """Stop the services, write the rest of the history, judge what the store holds,
        write how the run ended, clean up, close the connections."""
        ctx = run.context
        # no fault or stop request from now on: an op recorded after the history is closed
        # would be missing from the store, and the run would end in error for nothing
        background[0].cancel()
        await ctx.services.stop_all()
        for step in reversed(ctx._finally):
            with contextlib.suppress(Exception):
                await step()
        ctx.record(RUNNER, "info", "end", note="judging" if completed else run.status)
        unwritten = await ctx.history.close()
        if completed:
            await self._judge(run, found, unwritten)
        # clean up while the status still says running: if this process dies meanwhile, its
        # heartbeat stops and the janitor carries the plan out instead
        if not ctx.keep:
            await carry_out(ctx.plan)
        verdict_json = dataclasses.asdict(run.verdict) if run.verdict else None
        await record.finish(run.status, verdict_json, run.error)
        if run.status != "error" and not ctx.keep:
            # its processes' logs: kept only when something went wrong (or keep=on)
            shutil.rmtree(ctx.services.folder, ignore_errors=True)
        background[1].cancel()  # the heartbeat, after the status is written
        await asyncio.wait(background, timeout=3.0)  # bounded: the run's end must not hang on them
        for c in reversed(ctx._closing):
            with contextlib.suppress(Exception):
                await c.aclose()
        with contextlib.suppress(Exception):
            await control.aclose()

    async def _judge(self, run: LocalRun, found: Scenario, unwritten: int) -> None:
        ctx = run.context
        if unwritten:
            run.status = "error"
            run.error = (
                f"{unwritten} operation(s) could not be written to the control node "
                f"{self.env.control_node}: the history in the store is incomplete, so no verdict"
            )
            return
        try:
            run.stored = await ctx.history.read_back()
        except (redis_errors.RedisError, OSError) as exc:
            run.status, run.error = "error", f"cannot read the history back ({type(exc).__name__}: {exc})"
            return
        missing = ctx.history.missing(run.stored)
        if missing:
            run.status, run.error = "error", f"{missing}: no verdict from an incomplete history"
            return
        try:
            run.verdict = found.check(run.stored, ctx.params)
        except Exception as exc:
            run.status, run.error = "error", f"the checker failed: {type(exc).__name__}: {exc}"
            return
        if ctx.history.write_errors:
            retried = (
                f"{ctx.history.write_errors} write(s) of the history to {self.env.control_node} failed and "
                "were retried; the stored history is complete"
            )
            run.verdict = dataclasses.replace(run.verdict, findings=(*run.verdict.findings, retried))
        run.status = "stopped" if ctx.stopping.is_set() else ("held" if run.verdict.holds else "violated")

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
                if not isinstance(command, dict):
                    continue
                if command.get("stop"):
                    run.context.stopping.set()
                    run.context.record(RUNNER, "info", "stop", note="stop requested")
                elif isinstance(command.get("fault"), str):
                    name = command["fault"]
                    try:
                        self._check_fault(run.spec, name)
                    except ScenarioError as exc:
                        run.context.record(RUNNER, "info", "fault-refused", note=str(exc))
                        continue
                    run.context.live_faults.put_nowait(name)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def request_fault(self, run_id: str, scenario_name: str, fault: str) -> None:
        """Ask a running run (here or in another process) to take a fault now."""
        spec = spec_of(scenario_name)
        self._check_fault(spec, fault)
        if not spec.live_faults:
            raise ScenarioError(f"{scenario_name} takes its faults at start only (--fault {fault})")
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
            if run.janitor is not None:
                run.janitor.poll()  # reap it if it is gone (it leaves once the status is written)


def _janitor(run_id: str, control_url: str) -> subprocess.Popen[bytes]:
    """The run's janitor: a process of its own that outlives a kill -9 of this one."""
    folder = runs_dir() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "janitor.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scenarios.kit.janitor", "--run", run_id, "--control", control_url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
