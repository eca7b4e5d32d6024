"""The headless core: one collector per Redis node (a Redis Cluster's followed by a watcher of
its topology), one per ZooKeeper ensemble, one state.

Usage::

    obs = Observatory(redis_targets, zk_targets, on_change=wake_the_bus)
    await obs.start()
    ...  # obs.state.snapshot(), obs.state.drain()
    await obs.stop()

``on_change`` is called (on the loop) whenever a collector put something
new into the state; whoever fans events out to viewers drains them then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from collectors.layouts import LayoutConfig
from collectors.limits import Limits
from collectors.postgres import PgCollector
from collectors.redis_cluster import ClusterWatcher
from collectors.redis_keyspace import RedisCollector
from collectors.redis_topology import Topology
from collectors.state import State
from collectors.targets import PostgresTarget, RedisTarget, ZkTarget
from collectors.zookeeper import ZkCollector


class Observatory:
    def __init__(
        self,
        redis: list[RedisTarget],
        zookeeper: list[ZkTarget],
        layouts: LayoutConfig | None = None,
        on_change: Callable[[], None] | None = None,
        scan_interval_s: float | None = None,
        postgres: list[PostgresTarget] | None = None,
        limits: Limits | None = None,
    ) -> None:
        limits = limits or Limits()
        if scan_interval_s is not None:
            limits = replace(limits, scan_interval_s=scan_interval_s)
        self.state = State(layouts, limits=limits)
        self._on_change = on_change or (lambda: None)
        topology = Topology(redis)
        self.redis = [RedisCollector(t, self.state, self._changed, topology) for t in redis if not t.cluster]
        clusters: dict[str, list[RedisTarget]] = {}
        for t in redis:
            if t.cluster:
                clusters.setdefault(t.cluster, []).append(t)
        self.clusters = [
            ClusterWatcher(name, targets, self.state, self._changed, topology)
            for name, targets in clusters.items()
        ]
        self.zookeeper = [ZkCollector(t, self.state, self._changed) for t in zookeeper]
        self.postgres = [PgCollector(t, self.state, self._changed) for t in postgres or ()]
        self._tasks: list[asyncio.Task[None]] = []

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def _changed(self) -> None:
        self._on_change()

    async def start(self) -> None:
        for c in self.redis:
            self._tasks.append(asyncio.create_task(c.run(), name=f"collector {c.target.id}"))
        for cluster in self.clusters:
            cluster.start()
        for z in self.zookeeper:
            self._tasks.append(asyncio.create_task(z.run(), name=f"collector {z.target.id}"))
        for p in self.postgres:
            self._tasks.append(asyncio.create_task(p.run(), name=f"collector {p.target.id}"))

    async def wait_synced(self, timeout: float) -> list[str]:
        """Wait until every collector has read its node once; returns those that did not."""
        collectors: list[RedisCollector | ZkCollector | PgCollector] = [
            *self.redis,
            *(c for cluster in self.clusters for c in cluster.collectors.values()),
            *self.zookeeper,
            *self.postgres,
        ]
        waits = [asyncio.create_task(c.synced.wait()) for c in collectors]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for task in pending:
                task.cancel()
        return [c.target.id for c in collectors if not c.synced.is_set()]

    async def stop(self) -> None:
        for cluster in self.clusters:
            await cluster.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        self._tasks.clear()

    async def __aenter__(self) -> Observatory:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
