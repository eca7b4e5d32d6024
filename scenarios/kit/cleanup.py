"""A run's cleanup plan, and carrying it out.

A run writes only under ``coordscope:`` (Redis), ``/coordscope`` (ZooKeeper)
and ``coordscope_*`` schemas (PostgreSQL), and records what it created in its
plan as it goes. The plan is kept in the run's hash too, so that the run's
janitor can carry it out when the run's process died; otherwise the run
does it itself when it ends (unless ``keep=on``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

from kazoo.client import KazooClient
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client
from scenarios.kit.database import drop_schema, roll_back_prepared

DROP_ATTEMPTS = 5


@dataclass
class CleanupPlan:
    """What a run created, to be removed when it ends (or by its janitor if it dies)."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    """Redis URL -> keys."""
    patterns: dict[str, list[str]] = field(default_factory=dict)
    """Redis URL -> glob patterns (``SCAN MATCH``) of keys whose names the run cannot know
    ahead: the session ids its app instances draw."""
    znodes: list[tuple[str, str]] = field(default_factory=list)
    """(ZooKeeper hosts, path) — removed with everything under it."""
    schemas: list[tuple[str, str]] = field(default_factory=list)
    """(PostgreSQL conninfo, schema) — dropped with everything in it."""
    prepared: list[tuple[str, str]] = field(default_factory=list)
    """(PostgreSQL conninfo, gid prefix) — prepared transactions of the run left in doubt,
    rolled back first (they hold locks on the schemas' tables: a drop would wait on them)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "keys": self.keys,
                "patterns": self.patterns,
                "znodes": self.znodes,
                "schemas": self.schemas,
                "prepared": self.prepared,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> CleanupPlan:
        data = json.loads(raw or "{}")
        return cls(
            keys={str(k): [str(x) for x in v] for k, v in dict(data.get("keys", {})).items()},
            patterns={str(k): [str(x) for x in v] for k, v in dict(data.get("patterns", {})).items()},
            znodes=[(str(h), str(p)) for h, p in data.get("znodes", [])],
            schemas=[(str(d), str(s)) for d, s in data.get("schemas", [])],
            prepared=[(str(d), str(g)) for d, g in data.get("prepared", [])],
        )


async def carry_out(plan: CleanupPlan) -> None:
    """Delete the keys, znodes and schemas of the plan (each retried for a while: a node
    may be restarting after a fault). Prepared transactions left in doubt go first: their
    coordinator's log (keys, znodes) is what a viewer joins them with until then."""
    for dsn, prefix in plan.prepared:
        await roll_back_prepared(dsn, prefix)
    for url, keys in plan.keys.items():
        client = redis_client(RedisTarget.from_url(url))
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
    for url, patterns in plan.patterns.items():
        client = redis_client(RedisTarget.from_url(url))
        try:
            for pattern in patterns:
                await _delete_matching(client, pattern)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
    for hosts, path in plan.znodes:
        await remove_tree(hosts, path)
    for dsn, schema in plan.schemas:
        for _ in range(DROP_ATTEMPTS):
            if await drop_schema(dsn, schema):
                break
            # a lock held on it: a transaction of the run that was still on its way prepared
            # after the first pass (a backend whose client died does not know it until it
            # next answers): roll back again, and try again
            for where, prefix in plan.prepared:
                if where == dsn:
                    await roll_back_prepared(dsn, prefix)


async def _delete_matching(client: Redis, pattern: str) -> None:
    """Every key matching ``pattern``, deleted in batches (retried while the node restarts)."""
    for _ in range(20):
        try:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    await client.delete(*batch)
                    batch.clear()
            if batch:
                await client.delete(*batch)
            return
        except (redis_errors.RedisError, OSError):
            await asyncio.sleep(0.25)


async def remove_tree(hosts: str, path: str) -> None:
    """Delete a znode and everything under it (best effort, bounded: kazoo queues
    requests while it reconnects to a server that may be gone)."""
    await asyncio.to_thread(_remove_tree, hosts, path)


def _remove_tree(hosts: str, path: str) -> None:
    client = KazooClient(hosts=hosts, timeout=5.0)
    try:
        client.start(timeout=5)
        client.delete(path, recursive=True)
    except Exception:
        pass  # gone already (NoNodeError), or the server is (kazoo's own timeout class)
    finally:
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
