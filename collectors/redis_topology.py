"""Where each watched Redis node stands: which replicates which, and in a Redis Cluster
which slots it serves. Shared by every Redis collector (and the cluster watcher)."""

from __future__ import annotations

from dataclasses import dataclass

from collectors.targets import RedisTarget


@dataclass(frozen=True)
class Placement:
    """Where a Redis Cluster puts a node, as the cluster itself says (``CLUSTER NODES``)."""

    role: str
    """master | replica"""
    master: str | None = None
    """The primary it replicates (a watched node's id)."""
    slots: str = ""
    """The slots it serves, as the node panel shows them: ``0-5460 (5461)``."""
    failed: bool = False
    """The cluster marks it failed (``fail``)."""


class Topology:
    """Which watched node replicates which, shared by every Redis collector.

    A replica names its master by the address *it* connects to, which behind
    Docker or NAT is not the address we watch; its master lists it by the
    address the replica announces. Either match makes the replica's keys the
    master's entities. A Redis Cluster's nodes are placed by the cluster's own
    view instead (:mod:`collectors.redis_cluster`): every node at once, from
    one answer, so two nodes never both look like replicas mid-failover.
    """

    def __init__(self, targets: list[RedisTarget]) -> None:
        self._by_address: dict[str, str] = {}
        for t in targets:
            self.add(t)
        self._listed: dict[str, str] = {}
        self._placed: dict[str, Placement] = {}

    def add(self, target: RedisTarget) -> None:
        self._by_address[target.address] = target.id
        if target.host == "127.0.0.1":
            self._by_address[f"localhost:{target.port}"] = target.id

    def node_at(self, address: str) -> str | None:
        """The id of the watched node at ``host:port``."""
        return self._by_address.get(address)

    def place(self, node_id: str, placement: Placement) -> None:
        self._placed[node_id] = placement

    def placement(self, node_id: str) -> Placement | None:
        return self._placed.get(node_id)

    def master_listed(self, master_id: str, replica_addresses: list[str]) -> None:
        for address in replica_addresses:
            self._listed[address] = master_id

    def master_of(self, replica: RedisTarget, master_address: str) -> str | None:
        return self._by_address.get(master_address) or self._listed.get(replica.address)
