"""The embedded Redis Cluster of ``coordscope up --redis-cluster``.

Six redis-server processes on loopback, ``cluster-1`` .. ``cluster-6``, instead
of the independent masters: three primaries holding a third of the 16384 hash
slots each (0-5460, 5461-10922, 10923-16383, the split ``redis-cli --cluster
create`` makes) and one replica each (``cluster-4`` of ``cluster-1``,
``cluster-5`` of ``cluster-2``, ``cluster-6`` of ``cluster-3``).

Formed by hand — ``CLUSTER MEET``, ``CLUSTER ADDSLOTSRANGE``, ``CLUSTER
REPLICATE`` — rather than by ``redis-cli --cluster create``, which chooses
for itself which node replicates which: ours are the same every time, so the
docs and the tests can name them.

Each member keeps the cluster's view of itself in its own folder
(``nodes.conf``): a member killed and restarted rejoins the cluster from it
(as a replica of whoever took its slots meanwhile), while its keys start
empty like every Redis member's. A fresh cluster forgets old ``nodes.conf``
files first, or its members would look for the nodes of the last one.
``cluster-node-timeout`` is 2 s: a dead primary is failed over in a few
seconds rather than the default's fifteen-plus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis

from app.cluster_member import HOST, ClusterError, Member

NAME = "cluster"
"""The local Redis Cluster's name: its keys are entities of ``redis:cluster:...``."""
PRIMARIES = 3
NODE_TIMEOUT_MS = 2000
SLOTS = 16384
CONFIG_FILE = "nodes.conf"


def options(folder: Path, bus_port: int) -> list[str]:
    """What makes a redis-server a member of the cluster (beyond every member's options).
    The cluster bus gets a free port of its own (the default, port + 10000, may be taken
    or in the kernel's range for outgoing connections)."""
    return [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(folder / CONFIG_FILE),
        "--cluster-port",
        str(bus_port),
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        # what it tells the others and clients (MOVED replies, CLUSTER NODES): loopback
        "--cluster-announce-ip",
        HOST,
    ]


def names() -> list[tuple[str, str | None]]:
    """(member, the primary it starts as a replica of) for the six members."""
    primaries = [f"{NAME}-{i}" for i in range(1, PRIMARIES + 1)]
    found: list[tuple[str, str | None]] = [(p, None) for p in primaries]
    return found + [(f"{NAME}-{i + PRIMARIES}", p) for i, p in enumerate(primaries, start=1)]


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots each primary starts with, split as ``redis-cli --cluster create`` does."""
    per = SLOTS / primaries
    return [(round(i * per), round((i + 1) * per) - 1) for i in range(primaries)]


def bus_port(member: Member) -> int:
    """The member's cluster bus port (from its command line)."""
    return int(member.argv[member.argv.index("--cluster-port") + 1])


def forget(member: Member) -> None:
    """Remove the cluster config an earlier cluster left in the member's folder."""
    (Path(member.dir) / CONFIG_FILE).unlink(missing_ok=True)


def form(members: list[Member], timeout: float = 30.0) -> None:
    """Make the (running) members one cluster, unless they are one already, and wait until
    every member says ``cluster_state:ok`` and every replica's link to its primary is up."""
    clients = {
        m.name: redis.Redis(host=HOST, port=m.port, socket_timeout=5, decode_responses=True) for m in members
    }
    try:
        info = {name: _info(c) for name, c in clients.items()}
        if all(int(i.get("cluster_slots_assigned", 0)) == 0 for i in info.values()):
            _create(members, clients, timeout)
        _await(
            lambda: all(_info(c).get("cluster_state") == "ok" for c in clients.values()),
            timeout,
            "every member of the Redis Cluster to say cluster_state:ok",
            members,
        )
        replicas = [m for m in members if m.master is not None]
        _await(
            lambda: all(
                clients[m.name].info("replication").get("master_link_status") == "up" for m in replicas
            ),
            timeout,
            "every replica of the Redis Cluster to sync with its primary",
            members,
        )
    except redis.RedisError as exc:
        raise ClusterError(f"could not form the Redis Cluster: {exc}") from None
    finally:
        for c in clients.values():
            c.close()


def _create(members: list[Member], clients: dict[str, redis.Redis], timeout: float) -> None:
    first = members[0]
    # distinct config epochs before meeting, as redis-cli does: no collision to resolve
    for epoch, m in enumerate(members, start=1):
        call(clients[m.name], "CLUSTER", "SET-CONFIG-EPOCH", str(epoch))
    for m in members[1:]:
        call(clients[m.name], "CLUSTER", "MEET", HOST, str(first.port), str(bus_port(first)))
    _await(
        lambda: all(int(_info(c).get("cluster_known_nodes", 0)) == len(members) for c in clients.values()),
        timeout,
        "the members of the Redis Cluster to meet",
        members,
    )
    ids = {m.name: call(clients[m.name], "CLUSTER", "MYID") for m in members}
    primaries = [m for m in members if m.master is None]
    for m, (low, high) in zip(primaries, slot_ranges(len(primaries)), strict=True):
        call(clients[m.name], "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
    for m in members:
        if m.master is None:
            continue
        primary = ids[m.master]
        # a replica can only follow a node it knows as a primary: gossip first tells it
        _await(
            partial(_is_master, clients[m.name], primary),
            timeout,
            f"{m.name} to learn that {m.master} is a primary",
            members,
        )
        call(clients[m.name], "CLUSTER", "REPLICATE", primary)


def call(client: redis.Redis, *args: str) -> str:
    """A command whose reply is text (redis-py leaves ``execute_command`` untyped)."""
    return str(client.execute_command(*args))  # type: ignore[no-untyped-call]


def _info(client: redis.Redis) -> dict[str, str]:
    text = call(client, "CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _nodes(client: redis.Redis) -> str:
    return call(client, "CLUSTER", "NODES")


def _is_master(client: redis.Redis, node_id: str) -> bool:
    for line in _nodes(client).splitlines():
        parts = line.split()
        if parts and parts[0] == node_id:
            return "master" in parts[2].split(",")
    return False


def _await(condition: Callable[[], bool], timeout: float, what: str, members: list[Member]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise ClusterError(
        f"timed out after {timeout:.0f} s waiting for {what} "
        f"(logs in {', '.join(str(Path(m.dir) / 'redis.log') for m in members[:1])} ...)"
    )
