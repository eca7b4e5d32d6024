"""session end to end: real app processes behind a real HAProxy; every expected exit status
from the CLI; the sessions, HAProxy and the instances as the screens see them while a run
goes; notifications turned off mid-run, and what the viewer does about it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
import redis

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.nodes import Node
from collectors.families.runs import Run
from collectors.families.services import Service
from collectors.families.sessions import Session
from tests.conftest import cli, observing, run_scenario, running, until, wait_until


def sets(**params: str) -> list[str]:
    return [x for k, v in params.items() for x in ("--set", f"{k}={v}")]


def leftovers(info: ClusterInfo) -> list[str]:
    found: list[str] = []
    for m in info.masters:
        r = redis.Redis(port=m.port)
        for pattern in ("coordscope:session:*", "coordscope:service:session-*"):
            found += [k.decode() for k in r.scan_iter(pattern)]
        r.close()
    return found


@pytest.mark.parametrize(
    ("params", "faults", "status", "says"),
    [
        ({"store": "local"}, [], 1, "was logged out by app-"),
        ({"store": "sticky"}, [], 0, "served by up to 1 instance(s)"),
        ({"store": "sticky"}, ["kill-instance"], 1, "user-1 was logged out by app-"),
        ({"store": "redis"}, ["kill-instance"], 0, "without losing its login"),
        ({"store": "container"}, ["kill-instance"], 0, "without losing its login"),
        ({}, ["redis-restart-no-persistence"], 1, "was logged out by app-"),
        ({}, ["notifications-off"], 0, "without losing its login"),
        ({}, ["rotate-id"], 0, "without losing its login"),
        ({"rotate": "off"}, ["rotate-id"], 1, "the pre-login session id opened user-1's session"),
        ({"store": "container", "idle_s": "2"}, ["expire"], 0, "without losing its login"),
    ],
)
def test_expected_exit_status_from_the_cli(
    cluster: ClusterInfo, params: dict[str, str], faults: list[str], status: int, says: str
) -> None:
    flags = [x for f in faults for x in ("--fault", f)]
    out = cli(cluster, "run", "session", *sets(**params), *flags, "--quiet")
    assert out.returncode == status, out.stdout + out.stderr
    assert says in out.stdout.splitlines()[1], out.stdout
    if faults == ["expire"]:
        assert "1 legitimate expiry" in out.stdout and "expired event came" in out.stdout, out.stdout
    if faults == ["rotate-id"] and status == 0:
        assert "is gone from the store" in out.stdout, out.stdout
    if faults == ["notifications-off"]:
        assert "had to find the sessions' changes by scanning; restored" in out.stdout, out.stdout
        r = redis.Redis(port=cluster.masters[0].port)
        assert r.config_get("notify-keyspace-events")["notify-keyspace-events"] != ""
        r.close()
    assert leftovers(cluster) == []


async def test_sessions_haproxy_and_instances_show_while_a_run_goes(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        task = asyncio.create_task(
            run_scenario(
                cluster, local_cluster, "session", ["kill-instance"], requests="24", fault_ms="60000"
            )
        )

        def sessions(st: object) -> list[Session]:
            return [
                s for s in bus.state.entities("session") if isinstance(s, Session) and "{session-" in s.key
            ]

        await until(
            bus,
            lambda st: len([s for s in sessions(st) if s.user and s.served_by]) == 3,
            "three users' sessions, with the instance that served each",
            timeout=20,
        )
        one = next(s for s in sessions(bus.state) if s.user == "user-1")
        assert one.layout == "spring-session" and one.state == "live"
        assert one.served_by is not None and one.served_by.startswith("app-")
        assert one.expires_at_ms is not None and one.last_access_ms is not None
        assert one.attributes["user"] == "user-1"
        # HAProxy beside the instances, and what it thinks of them
        await until(
            bus,
            lambda st: any(
                isinstance(s, Service) and s.name == "haproxy" and s.detail.count(" UP") == 3
                for s in st.entities("service")
            ),
            "HAProxy with three servers up",
            timeout=20,
        )
        # the instance user-1 used is killed: HAProxy sees it DOWN, the users go on
        await until(
            bus,
            lambda st: any(
                isinstance(s, Service) and s.name == "haproxy" and " DOWN" in s.detail
                for s in st.entities("service")
            ),
            "HAProxy with a server down",
            timeout=20,
        )
        killed = [s for s in bus.state.entities("service") if isinstance(s, Service) and s.status == "killed"]
        assert len(killed) == 1 and killed[0].role == "app-instance"
        done = await task
        assert done.status == "held", done.verdict and done.verdict.summary
        run = bus.state.get("run", done.id)
        assert isinstance(run, Run)
        # a lane per user, requests coloured by instance (their tones), logins and logouts marked
        assert [lane.actor for lane in run.lanes][:3] == ["user-1", "user-2", "user-3"]
        tones = {s.tone for lane in run.lanes for s in lane.spans if s.kind == "request"}
        assert {"app-1", "app-2", "app-3"} <= tones
        assert [k for w, k, _ in run.legend if w == "tone"][:3] == ["app-1", "app-2", "app-3"]
        ticks = {t.kind for lane in run.lanes for t in lane.ticks}
        assert {"login", "logout", "crash"} <= ticks
        assert run.table[0][0] == "user" and len(run.table) == 4
        await until(bus, lambda st: not sessions(st), "the run's sessions cleaned up", timeout=15)
    assert leftovers(cluster) == []


async def test_a_container_blob_shows_opaque_with_its_size(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        task = asyncio.create_task(
            run_scenario(cluster, local_cluster, "session", [], store="container", requests="30", users="2")
        )
        await until(
            bus,
            lambda st: any(
                isinstance(s, Session) and s.layout == "container" and "bytes" in s.encoding
                for s in st.entities("session")
            ),
            "a container session",
            timeout=20,
        )
        blob = next(
            s for s in bus.state.entities("session") if isinstance(s, Session) and s.layout == "container"
        )
        assert blob.user is None and blob.attributes == {}  # only its container reads it
        assert blob.encoding.startswith("opaque container blob, ") and blob.ttl_ms is not None
        done = await task
        assert done.status == "held", done.verdict and done.verdict.summary


async def test_with_notifications_off_the_viewer_scans_and_loses_nothing(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    node = cluster.masters[0].name
    async with observing(cluster, scan_interval_s=1.0) as bus:
        task = asyncio.create_task(
            run_scenario(
                cluster,
                local_cluster,
                "session",
                ["notifications-off"],
                fault_at="1",
                requests="16",
                fault_ms="6000",
            )
        )

        def feed(st: object) -> str:
            n = bus.state.get("node", node)
            return n.feed if isinstance(n, Node) else ""

        await until(
            bus, lambda st: feed(st).startswith("scanning every"), "the node says it scans", timeout=20
        )
        assert any("notifications are off" in line.text for line in bus.state.snapshot().log)

        # sessions change meanwhile (each request moves lastAccessedTime and servedBy): the scan finds them
        def stamps(st: object) -> dict[str, int]:
            return {
                s.session_id: s.last_access_ms or 0
                for s in bus.state.entities("session")
                if isinstance(s, Session) and "{session-" in s.key and s.state == "live"
            }

        await until(bus, lambda st: len(stamps(st)) == 3, "three live sessions", timeout=20)
        first = stamps(bus.state)
        await until(
            bus,
            lambda st: (
                feed(st).startswith("scanning") and any(v > first.get(k, 0) for k, v in stamps(st).items())
            ),
            "a session touched since, found by scanning",
            timeout=20,
        )
        done = await task
        assert done.status == "held", done.verdict and done.verdict.summary
        await until(
            bus, lambda st: feed(st).startswith("keyspace notifications"), "the feed back", timeout=20
        )


def test_kill_9_of_the_run_leaves_no_haproxy_instance_or_key_behind(cluster: ClusterInfo) -> None:
    env = {**os.environ, "COORDSCOPE_STATE": cluster.state_dir}
    control = redis.Redis(port=cluster.masters[-1].port)
    run = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "session", *sets(requests="400"), "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: len(list(control.scan_iter("coordscope:service:session-*"))) == 4,
            30,
            "haproxy and 3 apps",
        )
        wait_until(lambda: leftovers(cluster), 20, "sessions written")
        pids = [int(control.hget(k, "pid") or 0) for k in control.scan_iter("coordscope:service:session-*")]
        assert len(pids) == 4 and all(running(p) for p in pids)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    # the janitor stops HAProxy (its command line names the run) and deletes the sessions
    wait_until(lambda: not any(running(p) for p in pids), 20, "HAProxy and every instance gone")
    wait_until(lambda: leftovers(cluster) == [], 20, "the run's sessions and registrations gone")
    control.close()
