"""Which PostgreSQL databases to watch: DSNs from flags, environment or the config file,
or the local cluster's; and the folders a root-run PostgreSQL leaves in /var/tmp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from app import config, local_postgres
from app.cluster import ClusterInfo, Member
from app.config import ConfigError
from collectors.targets import PostgresTarget, TargetError


def test_a_dsn_is_a_url_or_a_conninfo_string() -> None:
    url = PostgresTarget.from_dsn("postgresql://app:s%40cret@db.internal:5433/payments?sslmode=require")
    assert (url.id, url.address, url.user, url.dbname, url.password) == (
        "db.internal:5433/payments",
        "db.internal:5433",
        "app",
        "payments",
        "s@cret",
    )
    assert url.params == (("sslmode", "require"),)
    assert "s@cret" not in repr(url)
    conninfo = PostgresTarget.from_dsn("host=10.0.0.12 dbname=ledger user=watcher")
    assert (conninfo.host, conninfo.port, conninfo.user, conninfo.dbname) == (
        "10.0.0.12",
        5432,
        "watcher",
        "ledger",
    )
    defaults = PostgresTarget.from_dsn("postgresql://")
    assert (defaults.host, defaults.port, defaults.user, defaults.dbname) == (
        "localhost",
        5432,
        "postgres",
        "postgres",
    )


def test_the_dsn_of_a_target_reads_back_the_same() -> None:
    target = PostgresTarget(
        id="x",
        host="h",
        port=6000,
        user="o'brien",
        dbname="my db",
        password="a\\b c",
        params=(("sslmode", "disable"),),
    )
    assert psycopg.conninfo.conninfo_to_dict(target.dsn) == {
        "host": "h",
        "port": "6000",
        "user": "o'brien",
        "dbname": "my db",
        "password": "a\\b c",
        "sslmode": "disable",
    }


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("nonsense", 'is not a PostgreSQL DSN: missing "="'),
        ("postgresql://h:port/db", "the port must be a number"),
        ("host=a,b dbname=x", "one PostgreSQL host per DSN"),
    ],
)
def test_a_bad_dsn_says_what_is_wrong_on_one_line(dsn: str, message: str) -> None:
    with pytest.raises(TargetError, match=message) as failed:
        PostgresTarget.from_dsn(dsn)
    assert "\n" not in str(failed.value)


def test_flags_beat_environment_beat_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[postgres]\ndsns = ["postgresql://a@10.0.0.1/one", "host=10.0.0.2 dbname=two user=b"]\n')
    s = config.load(config_file=str(cfg), state_dir=str(tmp_path))
    assert [t.id for t in s.postgres] == ["10.0.0.1:5432/one", "10.0.0.2:5432/two"]
    assert s.redis == () and s.zookeeper == () and s.local is None and not s.writable
    monkeypatch.setenv("COORDSCOPE_PG", "postgresql://c@10.0.0.3/three, postgresql://c@10.0.0.4/four")
    s = config.load(config_file=str(cfg), state_dir=str(tmp_path))
    assert [t.id for t in s.postgres] == ["10.0.0.3:5432/three", "10.0.0.4:5432/four"]
    s = config.load(
        pg_dsns=["postgresql://d@10.0.0.5:6432/five"], config_file=str(cfg), state_dir=str(tmp_path)
    )
    assert [t.id for t in s.postgres] == ["10.0.0.5:6432/five"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[postgres]\ndsns = "postgresql://x/y"\n', "postgres.dsns must be a list of strings"),
        ('[postgres]\ndsns = ["postgresql://x:y/z"]\n', "the port must be a number"),
        (
            '[postgres]\ndsns = ["postgresql://x/y", "host=x dbname=y"]\n',
            "the same PostgreSQL database is named twice",
        ),
    ],
)
def test_bad_postgres_config_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(config_file=str(cfg), state_dir=str(tmp_path))


def test_the_pg_flag_reaches_the_settings(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "state", "--state", str(tmp_path), "--pg", "postgresql://x:nope/y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "coordscope: error: 'postgresql://x:nope/y': the port must be a number from 1 to 65535"
    )


def test_the_local_cluster_names_its_database() -> None:
    pg = Member(name="postgres-1", kind="postgres", port=25000, role="database", dir="/x/postgres-1", argv=())
    info = ClusterInfo(state_dir="/x", members=(pg,))
    (target,) = info.pg_targets()
    assert (target.id, target.address, target.user, target.dbname, target.password) == (
        "postgres-1",
        "127.0.0.1:25000",
        "coordscope",
        "coordscope",
        None,
    )
    assert target.dsn == "host=127.0.0.1 port=25000 user=coordscope dbname=coordscope"
    assert pg.cwd == "/x/postgres-1/data"  # where the postmaster runs: alive() looks there


def test_folders_whose_state_folder_is_gone_are_pruned_unless_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_postgres, "RUNTIME_ROOT", tmp_path)
    folders = {}
    for name, state in [("orphan", tmp_path / "gone"), ("kept", tmp_path), ("busy", tmp_path / "gone-too")]:
        folders[name] = tmp_path / name
        (folders[name] / "postgres-1").mkdir(parents=True)
        (folders[name] / "state").write_text(str(state))
    (tmp_path / "unknown").mkdir()  # no state file: not ours, left alone
    busy = subprocess.Popen(
        [sys.executable, "-c", "input()"], cwd=folders["busy"] / "postgres-1", stdin=subprocess.PIPE
    )
    try:
        local_postgres._prune(keep=tmp_path / "self")
    finally:
        busy.communicate("", timeout=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "kept", "unknown"]
