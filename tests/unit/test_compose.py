"""docker-compose.yml describes the cluster `coordscope up` starts: the same members,
configured alike. Docker does not run here, so this compares the file with what
LocalCluster plans (no server is started), member by member; a member or an option
added to one and not the other fails here. Options that say where a server runs
(ports, folders, bind addresses, socket folders) differ by design and are left out.

The services of the compose profile ``ensemble`` are the ZooKeeper ensemble of
`coordscope up --zk-ensemble 3`; those of ``redis-cluster``, the Redis Cluster of
`coordscope up --redis-cluster`; the others, the default cluster.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import config, local_postgres, redis_cluster
from app.cluster import ZOO_CFG, ZOO_ENSEMBLE_CFG, ClusterInfo, LocalCluster, Member

ROOT = Path(__file__).resolve().parents[2]
REDIS_WHERE = {"port", "bind", "dir", "logfile", "daemonize", "replicaof"}
REDIS_WHERE |= {"replica-announce-ip", "replica-announce-port", "cluster-config-file", "cluster-port"}
PG_WHERE = {"listen_addresses", "unix_socket_directories"}
ZOO_ENV = {
    "tickTime": "ZOO_TICK_TIME",
    "4lw.commands.whitelist": "ZOO_4LW_COMMANDS_WHITELIST",
    "admin.enableServer": "ZOO_ADMINSERVER_ENABLED",
    "maxClientCnxns": "ZOO_MAX_CLIENT_CNXNS",
    "initLimit": "ZOO_INIT_LIMIT",
    "syncLimit": "ZOO_SYNC_LIMIT",
}
"""zoo.cfg settings the official image takes from its own variables; the rest go in
ZOO_CFG_EXTRA."""


def _compose() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The default cluster: services in no profile."""
    return {name: s for name, s in _compose().items() if not s.get("profiles")}


@pytest.fixture(scope="module")
def ensemble_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _compose().items() if "ensemble" in s.get("profiles", ())}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> ClusterInfo:
    return LocalCluster(tmp_path_factory.mktemp("plan"))._plan(3)


@pytest.fixture(scope="module")
def ensemble_plan(tmp_path_factory: pytest.TempPathFactory) -> ClusterInfo:
    return LocalCluster(tmp_path_factory.mktemp("plan"))._plan(3, zk_servers=3)


def _kind(service: dict[str, Any]) -> str:
    return str(service["image"]).split(":")[0]


def _options(argv: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--name value...`` pairs of a redis-server command line."""
    options: dict[str, str] = {}
    name = None
    for arg in argv[1:]:
        if arg.startswith("--"):
            name = arg[2:]
            options[name] = ""
        else:
            assert name is not None, f"{arg!r} follows no option in {argv}"
            options[name] = f"{options[name]} {arg}".strip() if options[name] else arg
    return options


def _pg_settings(argv: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``-c name=value`` settings of a postgres command line."""
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]
    return dict(pair.split("=", 1) for pair in pairs)


def _command(service: dict[str, Any]) -> list[str]:
    return shlex.split(service["command"])


def _host_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    host, port, _ = mapping.split(":")
    assert host == "127.0.0.1", f"{mapping}: published on loopback only"
    return int(port)


def test_the_same_members_of_the_same_kinds(services: dict[str, dict[str, Any]], plan: ClusterInfo) -> None:
    assert {name: _kind(s) for name, s in services.items()} == {m.name: m.kind for m in plan.members}


def test_redis_members_are_configured_alike(services: dict[str, dict[str, Any]], plan: ClusterInfo) -> None:
    for m in plan.members:
        if m.kind != "redis":
            continue
        ours = _options(m.argv)
        theirs = _options(_command(services[m.name]))
        assert {k: v for k, v in theirs.items() if k not in REDIS_WHERE} == {
            k: v for k, v in ours.items() if k not in REDIS_WHERE
        }, m.name
        assert theirs["notify-keyspace-events"] == "KEA"
        assert theirs["save"] == "" and theirs["appendonly"] == "no", f"{m.name}: no persistence"


def test_the_replica_replicates_the_first_master(
    services: dict[str, dict[str, Any]], plan: ClusterInfo
) -> None:
    replicas = [m for m in plan.members if m.master is not None]
    assert [(m.name, m.master) for m in replicas] == [("replica-1", "redis-1")]
    for m in replicas:
        assert m.master is not None
        master_port = _options(_command(services[m.master]))["port"]
        assert _options(_command(services[m.name]))["replicaof"] == f"{m.master} {master_port}"
        assert m.master in services[m.name]["depends_on"]
        assert _options(m.argv)["replicaof"] == f"127.0.0.1 {plan.member(m.master).port}"


def _zoo_settings(service: dict[str, Any]) -> dict[str, str]:
    env = service["environment"]
    extra = dict(pair.split("=", 1) for pair in env.get("ZOO_CFG_EXTRA", "").split())
    return {key: env[var] for key, var in ZOO_ENV.items() if var in env} | extra


def test_zookeeper_is_configured_alike(services: dict[str, dict[str, Any]]) -> None:
    assert _zoo_settings(services["zookeeper"]) == ZOO_CFG


def test_the_ensemble_profile_is_the_ensemble_up_starts(
    ensemble_services: dict[str, dict[str, Any]], ensemble_plan: ClusterInfo
) -> None:
    ours = [m for m in ensemble_plan.members if m.kind == "zookeeper"]
    assert (
        sorted(ensemble_services) == [m.name for m in ours] == ["zookeeper-1", "zookeeper-2", "zookeeper-3"]
    )
    assert {m.name for m in ensemble_plan.members} - {m.name for m in ours} == {
        "redis-1",
        "redis-2",
        "redis-3",
        "replica-1",
        "postgres-1",
        "postgres-2",
    }  # the rest of the cluster is the default one
    for m in ours:
        service = ensemble_services[m.name]
        assert _kind(service) == "zookeeper"
        assert _zoo_settings(service) == ZOO_CFG | ZOO_ENSEMBLE_CFG, m.name
        env = service["environment"]
        assert env["ZOO_MY_ID"] == str(m.myid)
        # the same ids and as many servers; addresses differ by design (service names)
        theirs = sorted(entry.split("=", 1)[0] for entry in env["ZOO_SERVERS"].split())
        assert (
            theirs
            == sorted(peer.split("=", 1)[0] for peer in m.peers)
            == ["server.1", "server.2", "server.3"]
        )
        assert all(peer.split("=", 1)[1].startswith("127.0.0.1:") for peer in m.peers)


def test_postgres_allows_prepared_transactions_alike(
    services: dict[str, dict[str, Any]], plan: ClusterInfo
) -> None:
    servers = [m for m in plan.members if m.kind == "postgres"]
    assert [m.name for m in servers] == ["postgres-1", "postgres-2"]  # two participants
    for m in servers:
        ours = _pg_settings(m.argv)
        theirs = _pg_settings(_command(services[m.name]))
        assert {k: v for k, v in ours.items() if k not in PG_WHERE} == theirs == local_postgres.SETTINGS
        assert int(theirs["max_prepared_transactions"]) > 0
        assert ours["listen_addresses"] == "127.0.0.1" and ours["unix_socket_directories"] == ""
        env = services[m.name]["environment"]
        assert env["POSTGRES_USER"] == local_postgres.USER
        assert env["POSTGRES_DB"] == local_postgres.DATABASE
        assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # as initdb --auth=trust
    assert len({_host_port(services[m.name]) for m in servers}) == 2


def test_the_docker_config_file_names_every_member(
    services: dict[str, dict[str, Any]], plan: ClusterInfo, tmp_path: Path
) -> None:
    settings = config.load(config_file=str(ROOT / "docker" / "coordscope.toml"), state_dir=str(tmp_path))

    def port(m: Member) -> int:
        return _host_port(services[m.name])

    assert [t.address for t in settings.redis] == [
        f"127.0.0.1:{port(m)}" for m in plan.members if m.kind == "redis"
    ]
    assert set(settings.replicas) == {f"127.0.0.1:{port(m)}" for m in plan.members if m.master}
    assert [t.hosts for t in settings.zookeeper] == [
        f"127.0.0.1:{port(m)}" for m in plan.members if m.kind == "zookeeper"
    ]
    assert [(t.address, t.user, t.dbname) for t in settings.postgres] == [
        (f"127.0.0.1:{port(m)}", local_postgres.USER, local_postgres.DATABASE)
        for m in plan.members
        if m.kind == "postgres"
    ]


def test_the_docker_ensemble_config_names_the_ensemble(
    ensemble_services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    settings = config.load(
        config_file=str(ROOT / "docker" / "coordscope-ensemble.toml"), state_dir=str(tmp_path)
    )
    (target,) = settings.zookeeper
    assert target.hosts == ",".join(
        f"127.0.0.1:{_host_port(s)}" for _, s in sorted(ensemble_services.items())
    )
    default = config.load(config_file=str(ROOT / "docker" / "coordscope.toml"), state_dir=str(tmp_path))
    assert (settings.redis, settings.postgres) == (default.redis, default.postgres)


@pytest.fixture(scope="module")
def cluster_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _compose().items() if "redis-cluster" in s.get("profiles", ())}


@pytest.fixture(scope="module")
def cluster_plan(tmp_path_factory: pytest.TempPathFactory) -> ClusterInfo:
    return LocalCluster(tmp_path_factory.mktemp("plan"))._plan(3, redis_cluster=True)


def test_the_redis_cluster_profile_is_the_cluster_up_starts(
    cluster_services: dict[str, dict[str, Any]], cluster_plan: ClusterInfo
) -> None:
    ours = [m for m in cluster_plan.members if m.cluster]
    servers = {n: s for n, s in cluster_services.items() if _command(s)[0] == "redis-server"}
    assert sorted(servers) == [m.name for m in ours] == [f"cluster-{i}" for i in range(1, 7)]
    # instead of the independent masters and their replica; ZooKeeper and PostgreSQL stay
    rest = {m.name for m in cluster_plan.members} - {m.name for m in ours}
    assert rest == {"zookeeper", "postgres-1", "postgres-2"}
    for m in ours:
        mine = _options(m.argv)
        theirs = _options(_command(servers[m.name]))
        assert {k: v for k, v in theirs.items() if k not in REDIS_WHERE} == {
            k: v for k, v in mine.items() if k not in REDIS_WHERE
        }, m.name
        assert theirs["cluster-enabled"] == "yes"
        assert theirs["cluster-node-timeout"] == str(redis_cluster.NODE_TIMEOUT_MS)
        assert mine["cluster-config-file"].startswith(m.dir + "/"), "its own config file, in its folder"
        assert m.cluster == redis_cluster.NAME and ("replicaof" not in mine)
    assert [(m.name, m.master) for m in ours if m.master] == [
        ("cluster-4", "cluster-1"),
        ("cluster-5", "cluster-2"),
        ("cluster-6", "cluster-3"),
    ]
    (create,) = (s for s in cluster_services.values() if _command(s)[0] == "redis-cli")
    argv = _command(create)
    assert argv[1:3] == ["--cluster", "create"] and "--cluster-yes" in argv
    assert argv[argv.index("--cluster-replicas") + 1] == "1"
    assert [a for a in argv if a.startswith("127.0.0.1:")] == [
        f"127.0.0.1:{_options(_command(servers[n]))['port']}" for n in sorted(servers)
    ]


def test_the_docker_cluster_config_names_a_seed_of_the_cluster(
    cluster_services: dict[str, dict[str, Any]],
) -> None:
    # config.load would ask the seed for the topology: read the file as the loader would
    data = tomllib.loads((ROOT / "docker" / "coordscope-cluster.toml").read_text())
    assert data["redis"]["cluster"] is True
    port = _options(_command(cluster_services["cluster-1"]))["port"]
    assert data["redis"]["urls"] == [f"redis://127.0.0.1:{port}"]
    default = tomllib.loads((ROOT / "docker" / "coordscope.toml").read_text())
    assert (data["zookeeper"], data["postgres"]) == (default["zookeeper"], default["postgres"])
