"""What one coordscope process runs behind its screens: collectors, bus, runner.

The TUI and the web server of one process share a single :class:`Core`, so
``coordscope demo`` has one state and one set of collectors behind both
screens, and the two can never disagree.

A core made with a :class:`app.replay.Replay` shows a recording instead: the
bus reads the replay, no collector connects anywhere, and everything that
would change a store (a run, a fault, a stop) is refused as read-only.
"""

from __future__ import annotations

from app.bus import Bus
from app.cluster import LocalCluster
from app.config import Settings
from app.replay import READ_ONLY, Replay
from collectors.families.runs import Run
from collectors.observatory import Observatory
from scenarios.kit.catalogue import ScenarioError, ScenarioSpec
from scenarios.runner import Environment, LocalRun, Runner, catalogue


def environment(settings: Settings, cluster: LocalCluster | None) -> Environment:
    """Where this process's runs happen, and what its faults may signal."""
    local = settings.local
    return Environment(
        redis=settings.redis,
        masters=settings.masters,
        zookeeper=settings.zookeeper,
        postgres=settings.postgres,
        cluster=cluster,
        writable=settings.writable,
        replicas={m.name: m.master for m in local.members if m.master} if local else {},
    )


class Core:
    def __init__(self, settings: Settings, replay: Replay | None = None) -> None:
        self.settings = settings
        self.replay = replay
        self.cluster = LocalCluster(settings.state_dir) if settings.local is not None else None
        self.observatory = Observatory(
            list(settings.redis),
            list(settings.zookeeper),
            settings.layouts,
            limits=settings.limits,
            postgres=list(settings.postgres),
        )
        self.bus = Bus(replay or self.observatory)
        if replay is not None:
            replay.set_on_seek(self.bus.resync)
        self.runner = Runner(environment(settings, self.cluster))

    async def start(self) -> None:
        await (self.replay or self.observatory).start()

    async def stop(self) -> None:
        await self.runner.close()
        await (self.replay or self.observatory).stop()

    def catalogue(self) -> list[ScenarioSpec]:
        return [] if self.replay is not None else catalogue()

    def refuse_changes(self) -> None:
        """Raise when this core may not change the stores (it replays a recording)."""
        if self.replay is not None:
            raise ScenarioError(READ_ONLY)

    def validate(self, scenario: str, params: dict[str, str], faults: list[str]) -> None:
        self.refuse_changes()
        self.runner.validate(scenario, params, faults)

    async def request_fault(self, run_id: str, scenario: str, fault: str) -> None:
        self.refuse_changes()
        await self.runner.request_fault(run_id, scenario, fault)

    async def request_stop(self, run_id: str) -> None:
        self.refuse_changes()
        await self.runner.request_stop(run_id)

    async def start_run(self, scenario: str, params: dict[str, str], faults: list[str]) -> LocalRun:
        """Start a run and wait (briefly) until the collectors see it, so that a viewer
        asking for it right after gets it from the state like everything else."""
        self.refuse_changes()
        run = await self.runner.start(scenario, params, faults)
        await self.bus.wait_for(lambda st: st.get("run", run.id) is not None, timeout=3.0)
        return run

    def run_entity(self, run_id: str) -> Run | None:
        run = self.bus.state.get("run", run_id)
        return run if isinstance(run, Run) else None
