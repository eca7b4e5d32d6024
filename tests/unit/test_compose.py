"""docker-compose.yml describes the cluster `coordscope up` starts: the same members,
configured alike. Docker does not run here, so this compares the file with what
LocalCluster plans (no server is started), member by member; a member or an option
added to one and not the other fails here. Options that say where a server runs
(ports, folders, bind addresses, socket folders) differ by design and are left out.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import config, local_postgres
from app.cluster import ZOO_CFG, ClusterInfo, LocalCluster, Member

ROOT = Path(__file__).resolve().parents[2]
REDIS_WHERE = {"port", "bind", "dir", "logfile", "daemonize", "replicaof"}
REDIS_WHERE |= {"replica-announce-ip", "replica-announce-port"}
PG_WHERE = {"listen_addresses", "unix_socket_directories"}
ZOO_ENV = {
    "tickTime": "ZOO_TICK_TIME",
    "4lw.commands.whitelist": "ZOO_4LW_COMMANDS_WHITELIST",
    "admin.enableServer": "ZOO_ADMINSERVER_ENABLED",
    "maxClientCnxns": "ZOO_MAX_CLIENT_CNXNS",
}
"""zoo.cfg settings the official image takes from its own variables; the rest go in
ZOO_CFG_EXTRA."""


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(compose["services"])


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> ClusterInfo:
    return LocalCluster(tmp_path_factory.mktemp("plan"))._plan(3)


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


def test_zookeeper_is_configured_alike(services: dict[str, dict[str, Any]]) -> None:
    env = services["zookeeper"]["environment"]
    extra = dict(pair.split("=", 1) for pair in env.get("ZOO_CFG_EXTRA", "").split())
    theirs = {key: env[var] for key, var in ZOO_ENV.items() if var in env} | extra
    assert theirs == ZOO_CFG


def test_postgres_allows_prepared_transactions_alike(
    services: dict[str, dict[str, Any]], plan: ClusterInfo
) -> None:
    (m,) = (m for m in plan.members if m.kind == "postgres")
    ours = _pg_settings(m.argv)
    theirs = _pg_settings(_command(services[m.name]))
    assert {k: v for k, v in ours.items() if k not in PG_WHERE} == theirs == local_postgres.SETTINGS
    assert int(theirs["max_prepared_transactions"]) > 0
    assert ours["listen_addresses"] == "127.0.0.1" and ours["unix_socket_directories"] == ""
    env = services[m.name]["environment"]
    assert env["POSTGRES_USER"] == local_postgres.USER
    assert env["POSTGRES_DB"] == local_postgres.DATABASE
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # as initdb --auth=trust


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
