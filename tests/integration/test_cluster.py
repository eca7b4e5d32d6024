"""The embedded cluster: up is idempotent, down stops exactly its PIDs, missing binaries;
Redis members start empty; PostgreSQL keeps a prepared transaction across a crash."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from app import local_postgres
from app.cli import main
from app.cluster import ClusterError, ClusterInfo, LocalCluster, Member, alive
from app.cluster_member import processes_of, processes_under
from tests.conftest import LOCAL_NODES, redis_client, run_scenario, wait_until


def test_up_twice_reuses_and_down_stops_exactly_those_pids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    cluster = LocalCluster(state)
    info, started = cluster.up()
    try:
        assert started
        names = [m.name for m in info.members]
        assert names == list(LOCAL_NODES)
        assert len({m.port for m in info.members}) == len(LOCAL_NODES)
        pg = info.member("postgres-1")
        assert (pg.kind, pg.role) == ("postgres", "database")
        assert any(line.split()[:2] == ["postgres-1", "postgres"] for line in info.describe())
        assert main(["status", "--state", str(state)]) == 0
        status = capsys.readouterr().out
        for name in ("postgres-1", "postgres-2"):
            assert any(
                line.split()[:2] == [name, "postgres"] and "running" in line for line in status.splitlines()
            ), status
        if os.geteuid() == 0:  # run as the postgres user, on a folder it can reach and owns
            assert os.readlink(state / "postgres-1") == pg.dir
            assert Path(pg.dir).stat().st_uid == Path(pg.cwd).stat().st_uid == _uid("postgres")
            assert Path(pg.dir).stat().st_mode & 0o777 == 0o700
        for m in info.masters:
            r = redis.Redis(port=m.port)
            assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] in ("AKE", "KEA")
            assert r.config_get("bind")["bind"] == "127.0.0.1"
            r.close()
        again, started_again = cluster.up()
        assert not started_again
        assert [m.pid for m in again.members] == [m.pid for m in info.members]
        with pytest.raises(ClusterError, match="has 3 masters"):
            cluster.up(masters=5)
        # a member that died is started again on its own port
        cluster.kill("redis-2")
        assert not alive(cluster.load().member("redis-2"))  # type: ignore[union-attr]
        healed, started = cluster.up()
        assert started and healed.member("redis-2").port == info.member("redis-2").port
    finally:
        stopped = cluster.down()
    assert set(stopped) == set(names)
    assert not any(alive(m) for m in healed.members)
    pg = healed.member("postgres-1")
    # no postmaster, no backend (each in a session of its own), nothing in its group
    assert processes_of(pg) == [] and processes_under(pg.dir) == [] and _in_group(pg.pid) == []
    assert cluster.load() is None
    assert cluster.down() == []


async def test_five_masters_for_redlock(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "five")
    try:
        info, _ = cluster.up(masters=5)
        assert [m.name for m in info.masters] == [f"redis-{i}" for i in range(1, 6)]
        done = await run_scenario(
            info, cluster, "lock-redlock", ["kill-minority"], rounds="2", ttl_ms="1500", hold_ms="50"
        )
        assert done.status == "held", done.error  # 2 of 5 down: the other 3 are a majority
        start = next(op.note for op in done.stored if op.f == "start")
        assert "redis-5" in start and "quorum 3" in start, start
        attempts = [op.note for op in done.stored if op.f == "attempt"]
        assert attempts and all("/5 " in note for note in attempts), attempts  # a cell per master
    finally:
        cluster.down()


def test_missing_binary_gives_one_line_with_the_install_command(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH: no redis-server, no java
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "up", "--state", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "coordscope: error: redis-server not found: install it with `sudo apt-get install redis-server`"
    )


def test_a_member_that_steps_out_of_its_folder_is_still_recognised_by_its_config(tmp_path: Path) -> None:
    # HotSpot chdirs into /tmp/hsperfdata_<user> for a moment while it starts: a JVM member
    # must not look like someone else's process then (it made `up` give up on ZooKeeper)
    folder = tmp_path / "zookeeper"
    folder.mkdir()
    config = folder / "zoo.cfg"
    config.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(config)], cwd=tmp_path)
    try:
        # the command line of a process that has just been spawned can read empty for a moment
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        wait_until(lambda: cmdline.read_bytes() != b"", 5, "the child's command line")
        zk = Member(
            name="zookeeper",
            kind="zookeeper",
            port=1,
            role="standalone",
            dir=str(folder),
            argv=(),
            pid=proc.pid,
        )
        assert alive(zk)
        assert not alive(replace(zk, kind="redis"))  # redis is known by its folder only
        assert not alive(replace(zk, dir=str(tmp_path / "elsewhere")))
    finally:
        proc.kill()
        proc.wait()
    assert not alive(zk)


def _processes_in(info: ClusterInfo) -> list[int]:
    """PIDs whose working directory is inside the state folder or a member's folder
    (PostgreSQL's is elsewhere when run as root): what a leaked member looks like."""
    folders = {str(Path(info.state_dir).resolve()), *(m.dir for m in info.members)}
    return sorted({pid for folder in folders for pid in processes_under(folder)})


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_a_restart_racing_down_leaves_no_server_behind(tmp_path: Path) -> None:
    """A scenario bringing a killed node back while `down` runs (from another process:
    `coordscope down` during a run) once started a server no state file recorded."""
    state = tmp_path / "race"
    cluster = LocalCluster(state)
    info, _ = cluster.up()
    try:
        cluster.kill("redis-2")
        other = LocalCluster(state)  # the scenario's process has its own handle
        go = threading.Barrier(2)
        errors: list[BaseException] = []

        def restart() -> None:
            go.wait()
            try:
                other.restart("redis-2")
            except ClusterError as exc:  # down went first: nothing left to restart
                errors.append(exc)

        racer = threading.Thread(target=restart)
        racer.start()
        go.wait()
        cluster.down()
        racer.join(30)
        if not errors:  # the restart went first: down must have stopped it too
            assert cluster.load() is None
        wait_until(lambda: _processes_in(info) == [], 10, "every server of the folder gone")
    finally:
        LocalCluster(state).down()
        for pid in _processes_in(info):  # never leave one behind, even when failing
            os.kill(pid, 9)


def test_missing_postgres_gives_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_postgres, "PG_ROOT", tmp_path / "no-postgresql")
    cluster = LocalCluster(tmp_path / "s")
    with pytest.raises(ClusterError) as failed:
        cluster.up()
    assert str(failed.value) == (
        f"PostgreSQL not found (no {tmp_path}/no-postgresql/*/bin/postgres): "
        "install it with `sudo apt-get install postgresql`"
    )
    assert cluster.load() is None  # nothing was started


def test_a_redis_member_that_once_synced_as_a_replica_starts_empty(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    """A failover demotes a master to a replica; its full sync once left a dump.rdb that
    the next start loaded, bringing back keys (locks) everyone had seen deleted."""
    redis_client(cluster, "redis-1").mset({"old:1": "a", "old:2": "b"})
    member = cluster.member("redis-2")
    folder = Path(member.dir)
    r = redis_client(cluster, "redis-2")
    try:
        r.replicaof("127.0.0.1", str(cluster.member("redis-1").port))  # empty: a full sync
        wait_until(
            lambda: r.dbsize() == 2 and r.info("replication").get("master_link_status") == "up",
            10,
            "redis-2 to full-sync from redis-1",
        )
        assert not (folder / "dump.rdb").exists()  # loaded from the socket, not from a file
        r.save()  # whatever else writes one (a SAVE, an older coordscope's sync) is not loaded
        assert (folder / "dump.rdb").exists()
    finally:
        r.close()
    log = folder / "redis.log"
    seen = log.stat().st_size
    local_cluster.kill("redis-2")
    restarted = local_cluster.restart("redis-2")
    r = redis_client(cluster, "redis-2")
    try:
        assert r.dbsize() == 0
        assert r.info("replication")["role"] == "master"
    finally:
        r.close()
    assert restarted.port == member.port
    assert "keys loaded" not in log.read_text(errors="replace")[seen:]


def _pg(info: ClusterInfo, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    target = info.pg_targets()[0]  # postgres-1
    return psycopg.connect(target.dsn, connect_timeout=5, autocommit=autocommit)


def test_postgres_answers_on_loopback_with_prepared_transactions(cluster: ClusterInfo) -> None:
    with _pg(cluster) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "coordscope",
            "coordscope",
        )
        (prepared,) = conn.execute("SHOW max_prepared_transactions").fetchone() or (0,)
        assert int(str(prepared)) > 0
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_a_prepared_transaction_survives_a_crash_and_commits(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    gid = f"test-{uuid.uuid4().hex[:8]}"
    table = sql.Identifier("test_ledger")
    with _pg(cluster, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, cents int)").format(table))
    with _pg(cluster) as conn:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 500)").format(table), (gid,))
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        backend = conn.info.backend_pid
        before = cluster.member("postgres-1")
        assert backend in processes_of(before)
        local_cluster.kill("postgres-1")
        assert processes_of(before) == []  # the postmaster and every backend: a crash
        assert _state(backend) in ("gone", "Z")  # dead (a zombie until init reaps it)
    after = local_cluster.restart("postgres-1")
    assert after.port == before.port and after.pid != before.pid
    try:
        with _pg(cluster, autocommit=True) as conn:
            listed = conn.execute(
                "SELECT gid, owner, database FROM pg_prepared_xacts WHERE gid = %s", (gid,)
            ).fetchall()
            assert listed == [(gid, "coordscope", "coordscope")]
            count = sql.SQL("SELECT count(*) FROM {} WHERE id = %s").format(table)
            assert conn.execute(count, (gid,)).fetchone() == (0,)  # not committed yet
            conn.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
            assert conn.execute(count, (gid,)).fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
    finally:
        with _pg(cluster, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,)).fetchone():
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))


def test_pause_stops_the_whole_postgres_server(cluster: ClusterInfo, local_cluster: LocalCluster) -> None:
    with _pg(cluster) as conn:
        backend = conn.info.backend_pid
        member = cluster.member("postgres-1")
        local_cluster.pause("postgres-1")
        try:
            server = processes_of(member)
            assert backend in server and member.pid in server
            assert all(_state(pid) == "T" for pid in server)
        finally:
            local_cluster.resume("postgres-1")
        assert not any(_state(pid) == "T" for pid in processes_of(member))
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def _state(pid: int) -> str:
    return (_stat(pid) or ["gone"])[0]


def _in_group(pgid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _stat(int(p.name))[2:3] == [str(pgid)]
    ]


def test_a_postgres_that_cannot_start_says_why_in_one_line(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    member = local_cluster.kill("postgres-1")
    with socket.socket() as squatter:  # someone took its port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past its TIME_WAITs
        squatter.bind(("127.0.0.1", member.port))
        squatter.listen()
        with pytest.raises(ClusterError) as failed:
            local_cluster.restart("postgres-1")
    message = str(failed.value)
    assert message.startswith("postgres-1 exited while starting; its log says: ") and "\n" not in message
    assert "FATAL:  could not create any TCP/IP sockets" in message
    local_cluster.restart("postgres-1")  # the port is free again
    with _pg(cluster) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
