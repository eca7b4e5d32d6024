"""Follow a Redis Cluster's topology: which nodes exist, which are primaries of which
slots, which replicate whom — live, as failovers and resharding change it.

Algorithm
---------
1. Every ``POLL_S`` ask one reachable node for ``CLUSTER NODES`` (the one that
   answered last time first, then every other node we know of): one node's
   view, complete and consistent in itself.
2. Start a :class:`RedisCollector` for a node that joined (its id is its
   address unless the configuration named it); stop the collector of a node
   the cluster no longer lists, and forget what it read.
3. Place every node from that one view (:class:`Placement`: role, primary,
   slots) and tell the collectors, promoted nodes first: between the two
   updates of a failover both nodes are primaries with the same keys (one
   entity, two grants for a moment), never both replicas (no grant at all).
4. A node that is down and serves no slot (a dead primary whose replica took
   its slots, a dead replica) has its keys forgotten: the cluster no longer
   serves them from there, so they must not keep an entity stale. The node
   stays listed, down, as of its last good read, until the cluster forgets it.
5. A key a node redirects (``MOVED``/``ASK``: resharding moved its slot, or is
   moving it) is handed to the node named, which reads it (with ``ASKING``)
   before the first node's copy is dropped: a lock moved by a reshard stays one
   entity and never disappears in between.

Entities of a cluster's keys are the cluster's (``redis:<cluster>:<key>``),
not a primary's: see :func:`collectors.families.nodes.keyspace`.

Error handling
--------------
No node answering is not an error of the cluster's: the collectors show each
node down on their own; the view is kept as it was until one answers again.
A reply that cannot be parsed is logged once and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.limits import Limits
from collectors.redis_keyspace import RedisCollector
from collectors.redis_topology import Placement, Topology
from collectors.state import State
from collectors.targets import RedisTarget

POLL_S = 1.0
ERRORS = (redis_errors.RedisError, OSError)


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    address: str
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags


def parse_nodes(text: str) -> list[ClusterNode]:
    """``CLUSTER NODES`` as :class:`ClusterNode` s (nodes still in a handshake, or with no
    address, are left out; a slot being migrated, ``[slot->-id]``, is not a slot served)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = frozenset(parts[2].split(","))
        if flags & {"handshake", "noaddr"}:
            continue
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        found.append(
            ClusterNode(
                node_id=parts[0],
                address=parts[1].split("@")[0],
                flags=flags,
                primary_id=None if parts[3] == "-" else parts[3],
                slots=tuple(slots),
            )
        )
    return found


def slots_text(ranges: tuple[tuple[int, int], ...]) -> str:
    """``0-5460 (5461)``: the ranges a primary serves and how many slots that is."""
    if not ranges:
        return ""
    shown = ",".join(f"{a}-{b}" if b > a else str(a) for a, b in sorted(ranges))
    return f"{shown} ({sum(b - a + 1 for a, b in ranges)})"


class ClusterWatcher:
    """One Redis Cluster: its topology, and a collector per node (see the module)."""

    def __init__(
        self,
        name: str,
        targets: list[RedisTarget],
        state: State,
        wake: Callable[[], None],
        topology: Topology,
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self._seed = targets[0]
        self._state = state
        self._wake = wake
        self._topology = topology
        self._limits = limits
        self.collectors: dict[str, RedisCollector] = {}
        """By node id, every node the cluster lists (down ones too)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._addresses: list[str] = [t.address for t in targets]
        """Where to ask for the view, the node that answered last first."""
        self._poller: asyncio.Task[None] | None = None
        self.view: list[ClusterNode] = []
        self.polls = 0
        """Views read (for tests: one more means the watcher looked again)."""
        self.changed = asyncio.Event()
        """Set whenever a poll changed the topology (tests wait on it)."""
        for t in targets:
            self._add(t)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for node_id in list(self.collectors):
            self._run(node_id)
        self._poller = asyncio.create_task(self._poll_loop(), name=f"cluster {self.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        self._poller = None

    def _add(self, target: RedisTarget) -> RedisCollector:
        self._topology.add(target)
        collector = RedisCollector(target, self._state, self._wake, self._topology, self._limits)
        collector.handover = self._handover
        self.collectors[target.id] = collector
        return collector

    def _run(self, node_id: str) -> None:
        collector = self.collectors[node_id]
        self._tasks[node_id] = asyncio.create_task(collector.run(), name=f"collector {node_id}")

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        while True:
            nodes = await self._read_view()
            if nodes is not None:
                self.polls += 1
                self._apply(nodes)
            await asyncio.sleep(POLL_S)

    async def _read_view(self) -> list[ClusterNode] | None:
        for address in list(self._addresses):
            host, _, port = address.rpartition(":")
            client = Redis(
                **{**self._seed.connection(), "host": host, "port": int(port)},
                socket_connect_timeout=1.0,
                socket_timeout=2.0,
                decode_responses=True,
                client_name="coordscope-topology",
            )
            try:
                reply = await client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            except ERRORS:
                continue
            finally:
                with contextlib.suppress(*ERRORS):
                    await client.aclose()
            try:
                nodes = parse_nodes(str(reply))
            except ValueError as exc:
                self._state.log("warn", self.name, f"unreadable CLUSTER NODES from {address}: {exc}")
                continue
            self._addresses.remove(address)
            self._addresses.insert(0, address)
            return nodes
        return None

    def _apply(self, nodes: list[ClusterNode]) -> None:
        changed = nodes != self.view
        self.view = nodes
        ids = {n.node_id: self._id_of(n) for n in nodes}
        for n in nodes:
            if ids[n.node_id] not in self.collectors:
                target = self._target(n)
                self._add(target)
                self._run(target.id)
                self._state.log("info", self.name, f"{target.id} joined the cluster")
            if n.address not in self._addresses:
                self._addresses.append(n.address)
        listed = set(ids.values())
        for node_id in [i for i in self.collectors if i not in listed]:
            self._leave(node_id)
        # place every node from this one view, primaries first (see the module)
        placements = {
            ids[n.node_id]: Placement(
                role="master" if n.is_primary else "replica",
                master=ids.get(n.primary_id) if n.primary_id and not n.is_primary else None,
                slots=slots_text(n.slots),
                failed=n.failed,
            )
            for n in nodes
        }
        for node_id, placed in sorted(placements.items(), key=lambda kv: kv[1].role != "master"):
            self._topology.place(node_id, placed)
            self.collectors[node_id].placed()
        for node_id, placed in placements.items():
            serves = placed.role == "master" and bool(placed.slots)
            if not serves and self._state.down(node_id):
                self._forget_keys(node_id)
        if changed:
            self.changed.set()
            self._wake()

    def _id_of(self, n: ClusterNode) -> str:
        """Its id: the name the configuration gave it (the local cluster's cluster-1...),
        else its address."""
        return self._topology.node_at(n.address) or n.address

    def _target(self, n: ClusterNode) -> RedisTarget:
        host, _, port = n.address.rpartition(":")
        return replace(self._seed, id=n.address, host=host or self._seed.host, port=int(port))

    def _leave(self, node_id: str) -> None:
        task = self._tasks.pop(node_id, None)
        if task is not None:
            task.cancel()
        self.collectors.pop(node_id, None)
        self._state.log("info", self.name, f"{node_id} left the cluster")
        self._forget_keys(node_id)
        self._state.forget_node(node_id)

    def _forget_keys(self, node_id: str) -> None:
        for key in sorted(self._state.keys_of(node_id)):
            rec = self._state.record(node_id, key)
            if rec is not None and hasattr(rec, "raw_key"):
                self._state.drop_key(node_id, rec.raw_key, "failover")

    # ------------------------------------------------------------------ keys that moved

    def _handover(
        self, from_id: str, raw: bytes, cause: str, address: str, listed_on: frozenset[str]
    ) -> None:
        """A node redirected a key to ``address``: the collector there reads it, then the
        nodes that listed it drop it. A node we do not watch yet is found by the next poll;
        the key is read again then."""
        node_id = self._topology.node_at(address)
        taker = self.collectors.get(node_id) if node_id else None
        if taker is not None and node_id != from_id:
            taker.take(raw, cause, listed_on)
            return
        giver = self.collectors.get(from_id)
        if giver is not None:
            asyncio.get_running_loop().call_later(POLL_S, giver.take, raw, cause, listed_on)
