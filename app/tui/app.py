"""The Textual app: wiring and key bindings; the screens do the drawing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from app.bus import Viewer
from app.core import Core
from app.tui.model import Model
from app.tui.screens.dashboard import DashboardScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.launcher import LauncherScreen, LaunchRequest
from app.tui.screens.run_view import RunScreen
from scenarios.kit.catalogue import ScenarioError

STOPS = (signal.SIGTERM,)
"""Told to stop: the app ends as on ``q`` (a closed terminal, SIGHUP, is the CLI's to handle:
see ``app.cli.exit_on_hangup``)."""


class Service(Protocol):
    """Something served beside the TUI in the same loop (the demo's web server)."""

    should_exit: bool

    async def serve(self) -> None: ...


class CoordscopeApp(App[None]):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses live elsewhere
    TITLE = "coordscope"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "launch", "Run scenario"),
        Binding("v", "run_view", "Run view"),
        Binding("d", "dashboard", "Dashboard"),
        Binding("p", "pause", "Pause"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        core: Core,
        *,
        web_url: str | None = None,
        own_core: bool = True,
        services: Iterable[Service] = (),
    ) -> None:
        super().__init__()
        self.core = core
        self.web_url = web_url
        self.own_core = own_core
        self.model = Model()
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._viewer: Viewer | None = None
        self.launched: dict[str, LaunchRequest] = {}
        """The last request run per scenario: the launcher opens on them again."""
        self.last_launched: str | None = None
        self._services = list(services)
        self._tasks: list[asyncio.Task[None]] = []
        self.specs = {s.name: s for s in core.catalogue()}

    # ------------------------------------------------------------------ lifecycle

    async def on_mount(self) -> None:
        # Told to stop (SIGTERM): end as on `q`, so that what it started is stopped.
        loop = asyncio.get_running_loop()
        for sig in STOPS:
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (a test)
                loop.add_signal_handler(sig, self.exit)
        if self.own_core:
            await self.core.start()
        for service in self._services:
            self._tasks.append(asyncio.create_task(service.serve()))
        self._set_subtitle()
        self._viewer = self.core.bus.subscribe()
        self.run_worker(self._consume(), group="bus", exclusive=True)

    def get_default_screen(self) -> Screen[None]:
        return DashboardScreen(self.model)

    async def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOPS:  # a second one while we stop ends the process at once
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        if self._viewer is not None:
            self._viewer.close()
        for service in self._services:
            service.should_exit = True  # a graceful stop; cancel only what overstays
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=5)
            for task in late:
                task.cancel()
        if self.own_core:
            await self.core.stop()

    async def _consume(self) -> None:
        assert self._viewer is not None
        while True:
            await self._resumed.wait()
            delivery = await self._viewer.get()
            if self.paused:
                continue  # paused while we waited: resuming asks for a fresh snapshot anyway
            kinds, lines = self.model.apply(delivery)
            for screen in self.screen_stack:
                if isinstance(screen, DashboardScreen):
                    screen.apply(kinds, lines, reset_log=not isinstance(delivery, list))
                elif isinstance(screen, RunScreen) and "run" in kinds:
                    screen.refresh_run()
                elif isinstance(screen, RunScreen) and "ring" in kinds:
                    screen.refresh_ring()

    def _set_subtitle(self) -> None:
        parts = []
        if self.web_url:
            parts.append(f"web: {self.web_url}")
        settings = self.core.settings
        nodes = len(settings.redis) + len(settings.zookeeper) + len(settings.postgres)
        where = "local cluster" if self.core.settings.local else "external"
        parts.append(f"{nodes} node{'' if nodes == 1 else 's'} ({where})")
        if self.paused:
            parts.append("PAUSED (p to resume)")
        self.sub_title = " · ".join(parts)

    # ------------------------------------------------------------------ actions

    def action_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            self._resumed.clear()
        else:
            self._resumed.set()
            if self._viewer is not None:
                self._viewer.resync()  # whatever happened meanwhile arrives as one snapshot
        self._set_subtitle()
        self.notify(
            "paused: the screen is frozen, collectors keep watching" if self.paused else "resumed", timeout=2
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_dashboard(self) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def action_run_view(self, run_id: str | None = None) -> None:
        if isinstance(self.screen, RunScreen):
            return
        self.push_screen(RunScreen(self.model, self.specs, run_id))

    def action_launch(self, scenario: str | None = None, fault: str | None = None) -> None:
        launcher = LauncherScreen(
            list(self.specs.values()),
            scenario or self.last_launched,
            [fault] if fault else [],
            check=self._check,
            remembered=self.launched,
        )
        self.push_screen(launcher, self._launched)

    def _check(self, request: LaunchRequest) -> str | None:
        try:
            self.core.validate(request.scenario, request.params, request.faults)
        except ScenarioError as exc:
            return str(exc)
        return None

    def _launched(self, request: LaunchRequest | None) -> None:
        if request is not None:
            self.launched[request.scenario] = request
            self.last_launched = request.scenario
            self.run_worker(self._start(request), group="runs")

    async def _start(self, request: LaunchRequest) -> None:
        try:
            run = await self.core.start_run(request.scenario, request.params, request.faults)
        except ScenarioError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        if isinstance(self.screen, RunScreen):
            self.screen.run_id = run.id
            self.screen.refresh_run()
        else:
            self.push_screen(RunScreen(self.model, self.specs, run.id))

    async def on_run_screen_fault_requested(self, message: RunScreen.FaultRequested) -> None:
        try:
            await self.core.request_fault(message.run_id, message.scenario, message.fault)
            self.notify(f"{message.fault} requested for {message.run_id}", timeout=2, markup=False)
        except ScenarioError as exc:
            self.notify(str(exc), severity="error", markup=False)

    async def on_run_screen_stop_requested(self, message: RunScreen.StopRequested) -> None:
        try:
            await self.core.request_stop(message.run_id)
        except ScenarioError as exc:
            self.notify(str(exc), severity="error", markup=False)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for spec in self.specs.values():
            yield SystemCommand(
                f"Run {spec.name}",
                f"{spec.title}: {spec.summary}",
                lambda name=spec.name: self.action_launch(name),
            )
            for fault in spec.faults:
                yield SystemCommand(
                    f"Run {spec.name} with {fault.name}",
                    fault.help,
                    lambda name=spec.name, f=fault.name: self.action_launch(name, f),
                )
        yield SystemCommand("Run view", "lanes and verdict of the latest run", self.action_run_view)
