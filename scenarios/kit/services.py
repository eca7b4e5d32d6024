"""The processes a run starts: payment services, app instances, workers, coordinators.

Each is a real OS process (``python -m <module>``), on its own free loopback
port, in its own session (so a signal reaches it and whatever it spawned).
The run knows each by its :class:`asyncio.subprocess.Process` and only ever
signals those: SIGKILL for a crash, SIGSTOP/SIGCONT for a pause, SIGTERM
then SIGKILL to stop them all when the run ends. Each process registers
itself in the store (:mod:`scenarios.kit.process`) and exits by itself when
its run's heartbeat stops, so a ``kill -9`` of the run leaves nothing behind.

Readiness: a service writes one line, ``ready``, on its standard output once
it serves (then nothing more: its logs go to a file in the run's folder);
the run waits for that line or the process's exit, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.state import now_ms
from collectors.targets import LOOPBACK, free_port
from scenarios.kit.catalogue import ScenarioError
from scenarios.kit.history import source_of

HOST = LOOPBACK
READY_TIMEOUT_S = 20.0


def runs_dir() -> Path:
    """Where services' logs go (one folder per run)."""
    return Path(os.environ.get("COORDSCOPE_RUNS") or Path(tempfile.gettempdir()) / "coordscope-runs")


@dataclass
class Service:
    name: str
    role: str
    module: str
    args: list[str]
    port: int
    proc: asyncio.subprocess.Process | None = None
    restart: bool = False
    """Start it again when it crashes (as an orchestrator would)."""
    expected_exit: bool = False
    """Set before the run itself stops or kills it (an exit then is no crash)."""
    exits: int = 0
    spawns: int = 0
    """How many times it was started: each start narrates as a source of its own."""

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


Narrate = Callable[..., object]
"""The run's :meth:`History.record`: what happens to a service goes on its lane."""
RESTART_AFTER_S = 0.3
PORT_ATTEMPTS = 3


class PortTaken(ScenarioError):
    """A service could not bind its port: something else listens there."""


@dataclass
class ServiceSet:
    """One run's processes."""

    run_id: str
    control_url: str
    t0: float
    """The run's time origin (monotonic clock), passed on so services narrate on its axis."""
    control: Redis | None = None
    record: Narrate | None = None
    services: dict[str, Service] = field(default_factory=dict)
    _watchers: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    @property
    def folder(self) -> Path:
        return runs_dir() / self.run_id

    def common_args(self, service: Service) -> list[str]:
        return [
            "--run", self.run_id, "--name", service.name, "--role", service.role,
            "--port", str(service.port), "--control", self.control_url, "--t0", repr(self.t0),
            "--incarnation", str(service.spawns),
        ]  # fmt: skip

    async def start(
        self,
        name: str,
        role: str,
        module: str,
        args: list[str],
        port: int | None = None,
        restart: bool = False,
    ) -> Service:
        """Start ``python -m module`` and wait until it serves."""
        service = self.services.get(name) or Service(
            name, role, module, args, port or free_port(), restart=restart
        )
        self.services[name] = service
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self._spawn(service)
                return service
            except PortTaken:
                # free_port's port was taken by another process before ours bound it: a port
                # of our choosing is chosen again (one the caller gave, or a restart's, is kept)
                if port is not None or service.spawns > attempt + 1 or attempt + 1 == PORT_ATTEMPTS:
                    raise
                service.port = free_port()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _narrate(self, service: Service, f: str, note: str, **data: object) -> None:
        if self.record is not None:  # a crash is a tick on its lane (collectors.runs.lanes)
            self.record(service.name, "info", f, note=note, data=dict(data))

    async def _spawn(self, service: Service) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{service.name}.log"
        log = open(path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        logged_before = log.tell()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                service.module,
                *self.common_args(service),
                *service.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        service.proc = proc
        service.spawns += 1
        service.expected_exit = False
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            why = self.log_tail(service)
            this_time = path.read_bytes()[logged_before:].decode(errors="replace").lower()
            taken = PortTaken if "address already in use" in this_time else ScenarioError
            raise taken(f"{service.name} ({service.module}) did not start on {service.address}: {why}")
        self._watchers.append(asyncio.create_task(self._watch(service, proc), name=f"watch {service.name}"))

    async def _watch(self, service: Service, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        service.exits += 1
        if service.expected_exit or self._stopping:
            return
        how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
        self._narrate(
            service, "crash", how, status=status, source=source_of(service.name, service.spawns - 1)
        )
        await self._mark(service, "killed", how)
        if service.restart:
            await asyncio.sleep(RESTART_AFTER_S)
            if not self._stopping:
                try:
                    await self._spawn(service)
                except ScenarioError as exc:
                    self._narrate(service, "restart-failed", str(exc))
                else:
                    self._narrate(service, "restarted", f"pid {service.pid}, on {service.address}")

    def log_tail(self, service: Service, lines: int = 3) -> str:
        try:
            text = (self.folder / f"{service.name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def get(self, name: str) -> Service:
        if name not in self.services:
            raise ScenarioError(f"no service {name!r} in this run (it has {', '.join(self.services)})")
        return self.services[name]

    async def _mark(self, service: Service, status: str, detail: str = "") -> None:
        """Say in the store what the run did to a service (it cannot say so itself)."""
        if self.control is None:
            return
        with contextlib.suppress(Exception):
            await self.control.hset(
                coordscope.service_key(self.run_id, service.name),
                mapping={"status": status, "detail": detail, "changed_ms": str(now_ms())},
            )

    def _signal(self, service: Service, sig: signal.Signals) -> None:
        if not service.running or service.proc is None:
            raise ScenarioError(f"{service.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.proc.pid, sig)

    async def kill(self, name: str, why: str = "SIGKILL", narrate: bool = True) -> Service:
        """A crash: SIGKILL, no shutdown of any kind (on its lane unless the caller says it)."""
        service = self.get(name)
        service.expected_exit = True
        self._signal(service, signal.SIGKILL)
        assert service.proc is not None
        await service.proc.wait()
        if narrate:
            self._narrate(
                service, "crash", f"SIGKILL: {why}", source=source_of(service.name, service.spawns - 1)
            )
        await self._mark(service, "killed", why)
        return service

    async def pause(self, name: str) -> Service:
        """SIGSTOP: the process is frozen (its heartbeat stops: the screens say silent)."""
        service = self.get(name)
        self._signal(service, signal.SIGSTOP)
        await self._mark(service, "paused", "SIGSTOP")
        return service

    async def resume(self, name: str) -> Service:
        service = self.get(name)
        self._signal(service, signal.SIGCONT)  # its next heartbeat says it is up again
        return service

    async def stop(self, name: str, timeout: float = 5.0) -> Service:
        """Stop one service for good (SIGTERM, SIGKILL if it overstays): no crash, no restart."""
        service = self.get(name)
        if not service.running or service.proc is None:
            return service
        service.expected_exit = True
        self._signal(service, signal.SIGTERM)
        try:
            await asyncio.wait_for(service.proc.wait(), timeout)
        except TimeoutError:
            self._signal(service, signal.SIGKILL)
            await service.proc.wait()
        return service

    async def restart(self, name: str) -> Service:
        """Start a service again on its port (after a crash, as an orchestrator would)."""
        service = self.get(name)
        if service.running:
            raise ScenarioError(f"{name} is still running")
        await self._spawn(service)
        return service

    async def stop_all(self, timeout: float = 3.0) -> None:
        """SIGTERM every service (a paused one is resumed first), SIGKILL what overstays."""
        self._stopping = True
        running = [s for s in self.services.values() if s.running]
        for s in running:
            s.expected_exit = True
            with contextlib.suppress(ScenarioError):
                self._signal(s, signal.SIGCONT)
                self._signal(s, signal.SIGTERM)
        waits = [asyncio.ensure_future(s.proc.wait()) for s in running if s.proc is not None]
        if waits:
            _, late = await asyncio.wait(waits, timeout=timeout)
            if late:
                for s in running:
                    with contextlib.suppress(ScenarioError):
                        self._signal(s, signal.SIGKILL)
                await asyncio.wait(waits, timeout=timeout)
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        if self.control is not None:
            with contextlib.suppress(Exception):
                keys = [coordscope.service_key(self.run_id, n) for n in self.services]
                if keys:
                    await self.control.delete(*keys)
