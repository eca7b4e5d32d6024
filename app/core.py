"""What one coordscope process runs behind its screens: collectors, bus, runner.

The TUI and the web server of one process share a single :class:`Core`, so
``coordscope demo`` has one state and one set of collectors behind both
screens, and the two can never disagree.
"""

from __future__ import annotations

from app.bus import Bus
from app.cluster import LocalCluster
from app.config import Settings
from collectors.families.runs import Run
from collectors.observatory import Observatory
from scenarios.kit.catalogue import ScenarioSpec
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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster = LocalCluster(settings.state_dir) if settings.local is not None else None
        self.observatory = Observatory(
            list(settings.redis),
            list(settings.zookeeper),
            settings.layouts,
            limits=settings.limits,
            postgres=list(settings.postgres),
        )
        self.bus = Bus(self.observatory)
        self.runner = Runner(environment(settings, self.cluster))

    async def start(self) -> None:
        await self.observatory.start()

    async def stop(self) -> None:
        await self.runner.close()
        await self.observatory.stop()

    def catalogue(self) -> list[ScenarioSpec]:
        return catalogue()

    async def start_run(self, scenario: str, params: dict[str, str], faults: list[str]) -> LocalRun:
        """Start a run and wait (briefly) until the collectors see it, so that a viewer
        asking for it right after gets it from the state like everything else."""
        run = await self.runner.start(scenario, params, faults)
        await self.bus.wait_for(lambda st: st.get("run", run.id) is not None, timeout=3.0)
        return run

    def run_entity(self, run_id: str) -> Run | None:
        run = self.bus.state.get("run", run_id)
        return run if isinstance(run, Run) else None
