"""What a scenario gets to work with: where it runs, its parameters, its history, its
clients, its processes — and what it must leave behind clean.

:class:`Environment` says where runs happen (the Redis nodes, which are masters,
ZooKeeper, PostgreSQL, and whether coordscope may signal the servers'
processes). :class:`RunContext` is one run's: its parameters, its history
(:meth:`RunContext.record`), clients that are closed when it ends, the
processes it started (:attr:`RunContext.services`), and its *cleanup plan* —
the keys, znodes and PostgreSQL schemas it created. The plan is also kept in
the run's hash in the store, so that the run's janitor (a process of its own,
:mod:`scenarios.kit.janitor`) can clean up after a run whose process died.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import Op
from collectors.targets import PostgresTarget, RedisTarget, ZkTarget
from scenarios.kit.catalogue import ScenarioError, ScenarioSpec
from scenarios.kit.cleanup import CleanupPlan
from scenarios.kit.clients import redis_client
from scenarios.kit.history import History, RunRecord
from scenarios.kit.services import ServiceSet


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
    postgres: tuple[PostgresTarget, ...] = ()
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
        return redis_client(self.target(node_id))

    @property
    def redis_cluster(self) -> bool:
        """Is Redis here a Redis Cluster (clients route each key to its slot's primary)?"""
        return any(t.cluster for t in self.redis)

    @property
    def control_node(self) -> str:
        return self.control or self.masters[-1]

    def database(self, scenario: str) -> PostgresTarget:
        """The business database a scenario keeps its tables in."""
        if not self.postgres:
            raise ScenarioError(
                f"{scenario} keeps its business data in PostgreSQL, and none is configured "
                "(coordscope up starts one; or give --pg DSN)"
            )
        return self.postgres[0]


@dataclass
class RunContext:
    """What a scenario gets: its parameters, its history, its clients, its processes."""

    run_id: str
    spec: ScenarioSpec
    params: dict[str, str | int]
    faults: list[str]
    history: History
    env: Environment
    services: ServiceSet
    record_: RunRecord | None = None
    live_faults: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    actors: list[str] = field(default_factory=list)
    plan: CleanupPlan = field(default_factory=CleanupPlan)
    plan_changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the plan grew: the heartbeat writes it to the run's hash at once."""
    _closing: list[Closable] = field(default_factory=list)
    _finally: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def number(self, name: str) -> int:
        return int(self.params[name])

    def choice(self, name: str) -> str:
        return str(self.params[name])

    @property
    def keep(self) -> bool:
        return self.params.get("keep") == "on"

    def client(self, node_id: str) -> Redis:
        """A client of its own on a node (closed when the run ends)."""
        return self.closing(self.env.client(node_id))

    def closing(self, thing: C) -> C:
        """Close this when the run ends (after the cleanup; the last registered first)."""
        self._closing.append(thing)
        return thing

    def at_end(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run this when the run ends, before its keys are deleted (e.g. restore a setting)."""
        self._finally.append(step)

    def record(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        return self.history.record(actor, kind, f, **kw)

    def cleanup(self, node_id: str, *keys: str) -> None:
        """Delete these keys when the run ends (they must be ours: under ``coordscope:``)."""
        url = self.env.target(node_id).url
        for key in keys:
            if not key.startswith(coordscope.PREFIX):
                raise ValueError(f"scenarios write only under {coordscope.PREFIX}: {key!r}")
            self.plan.keys.setdefault(url, []).append(key)
        self.plan_changed.set()

    def cleanup_matching(self, node_id: str, pattern: str) -> None:
        """Delete every key matching this glob when the run ends (names drawn at random by
        its processes); the pattern must be ours: under ``coordscope:``."""
        if not pattern.startswith(coordscope.PREFIX) or pattern[len(coordscope.PREFIX) :][:1] in ("", "*"):
            raise ValueError(f"scenarios delete only theirs, under {coordscope.PREFIX}<name>: {pattern!r}")
        self.plan.patterns.setdefault(self.env.target(node_id).url, []).append(pattern)
        self.plan_changed.set()

    def cleanup_znode(self, hosts: str, path: str) -> None:
        if not (path == coordscope.ZNODE_ROOT or path.startswith(coordscope.ZNODE_ROOT + "/")):
            raise ValueError(f"scenarios write only under {coordscope.ZNODE_ROOT}: {path!r}")
        self.plan.znodes.append((hosts, path))
        self.plan_changed.set()

    def cleanup_schema(self, database: PostgresTarget, schema: str) -> None:
        if not schema.startswith("coordscope_"):
            raise ValueError(f"scenarios keep their tables in coordscope_* schemas: {schema!r}")
        self.plan.schemas.append((database.dsn, schema))
        self.plan_changed.set()

    def cleanup_prepared(self, database: PostgresTarget, prefix: str) -> None:
        """Roll back the run's prepared transactions still in doubt when it ends (before its
        schemas are dropped): their gids start with ``prefix``, which must be ours."""
        if not prefix.startswith(coordscope.PREFIX) or len(prefix) <= len(coordscope.PREFIX):
            raise ValueError(
                f"our prepared transactions' gids start with {coordscope.PREFIX}<run>: {prefix!r}"
            )
        self.plan.prepared.append((database.dsn, prefix))
        self.plan_changed.set()

    async def set_table(self, rows: list[list[str]]) -> None:
        """Publish the scenario's own table (a header row first) with the run."""
        if self.record_ is not None:
            await self.record_.update(table=rows)

    async def set_actors(self, actors: list[str]) -> None:
        self.actors = actors
        if self.record_ is not None:
            await self.record_.update(actors=actors)
