"""The embedded cluster: up is idempotent, down stops exactly its PIDs, missing binaries."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from app.cluster import ClusterError, LocalCluster, Member, alive
from tests.conftest import run_scenario, wait_until


def test_up_twice_reuses_and_down_stops_exactly_those_pids(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "state")
    info, started = cluster.up()
    try:
        assert started
        names = [m.name for m in info.members]
        assert names == ["redis-1", "redis-2", "redis-3", "replica-1", "zookeeper"]
        assert len({m.port for m in info.members}) == 5
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
        start = next(op.note for op in done.context.history.ops if op.f == "start")
        assert "redis-5" in start and "quorum 3" in start, start
        attempts = [op.note for op in done.context.history.ops if op.f == "attempt"]
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


def _processes_in(folder: Path) -> list[int]:
    """PIDs whose working directory is inside ``folder`` (what a leaked member looks like)."""
    inside = str(folder.resolve()) + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (os.readlink(entry / "cwd") + "/").startswith(inside):
                    found.append(int(entry.name))
    return found


def test_a_restart_racing_down_leaves_no_server_behind(tmp_path: Path) -> None:
    """A scenario bringing a killed node back while `down` runs (from another process:
    `coordscope down` during a run) once started a server no state file recorded."""
    state = tmp_path / "race"
    cluster = LocalCluster(state)
    cluster.up()
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
        wait_until(lambda: _processes_in(state) == [], 10, "every server of the folder gone")
    finally:
        LocalCluster(state).down()
        for pid in _processes_in(state):  # never leave one behind, even when failing
            os.kill(pid, 9)
