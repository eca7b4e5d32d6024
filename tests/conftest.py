"""Fixtures: one real local cluster per test session, started by the same code as
``coordscope up`` on free loopback ports, stopped by PID at the end.

Tests that touch the servers get a clean keyspace (FLUSHALL on every master)
and an empty ``/coordscope`` plus their own ZooKeeper root. Waiting is always
on a condition (:func:`wait_until`, ``bus.wait_for``), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from kazoo.client import KazooClient

from app.bus import Bus
from app.cluster import ClusterInfo, LocalCluster, alive, free_port
from app.config import Settings
from app.core import Core, environment
from app.web import create_app, server
from collectors.observatory import Observatory
from collectors.state import State
from scenarios.runner import LocalRun, Runner


@pytest.fixture(scope="session")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coordscope-state")


@pytest.fixture(scope="session")
def local_cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(cluster_dir)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> ClusterInfo:
    """The running cluster, every member alive (restarted if a test killed one), keyspace empty."""
    info, _ = local_cluster.up()
    _reset(info)
    return info


def _reset(info: ClusterInfo) -> None:
    for m in info.masters:
        r = redis.Redis(port=m.port, socket_timeout=5)
        r.config_set("notify-keyspace-events", "KEA")
        r.flushall()
        r.close()
    replica = next((m for m in info.members if m.name == "replica-1"), None)
    if replica is not None:
        r = redis.Redis(port=replica.port, socket_timeout=5)
        r.config_set("notify-keyspace-events", "KEA")
        if r.info("replication")["role"] == "master":  # a test promoted it: demote it again
            r.execute_command("REPLICAOF", "127.0.0.1", str(info.member("redis-1").port))
        wait_until(
            lambda: r.dbsize() == 0 and r.info("replication").get("master_link_status") == "up",
            10,
            "the replica to follow redis-1 with an empty keyspace",
        )
        r.close()
    zk = zk_client(info)
    try:
        zk.delete("/coordscope", recursive=True)
        zk.delete("/tests", recursive=True)
    finally:
        zk.stop()
        zk.close()


def redis_port(info: ClusterInfo, name: str) -> int:
    return info.member(name).port


def redis_client(info: ClusterInfo, name: str = "redis-1") -> redis.Redis:
    return redis.Redis(port=redis_port(info, name), socket_timeout=5)


def zk_client(info: ClusterInfo, timeout: float = 10.0) -> KazooClient:
    client = KazooClient(hosts=info.member("zookeeper").address, timeout=timeout)
    client.start(timeout=10)
    return client


@pytest.fixture
def zk_root() -> str:
    return f"/tests/{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll a condition (for blocking clients in tests); fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def eventually(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """:func:`wait_until` for async tests: the loop runs meanwhile (a run, a collector)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def until(bus: Bus, predicate: Callable[[State], object], what: str, timeout: float = 5.0) -> None:
    """Wait for the state to satisfy a condition, woken by every flush of the bus."""
    if not await bus.wait_for(lambda st: bool(predicate(st)), timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def observing(info: ClusterInfo, scan_interval_s: float = 0.5, **kw: object) -> AsyncIterator[Bus]:
    """Collectors on the whole local cluster, synced, behind a bus."""
    obs = Observatory(
        info.redis_targets(),
        info.zk_targets(),
        scan_interval_s=scan_interval_s,
        postgres=info.pg_targets(),
        **kw,  # type: ignore[arg-type]
    )
    bus = Bus(obs)
    await obs.start()
    try:
        missing = await obs.wait_synced(10)
        assert not missing, f"collectors never synced: {missing}"
        yield bus
    finally:
        await obs.stop()


def settings_for(info: ClusterInfo) -> Settings:
    """What `coordscope` resolves for the local cluster in ``info``."""
    return Settings(
        state_dir=Path(info.state_dir),
        redis=tuple(info.redis_targets()),
        zookeeper=tuple(info.zk_targets()),
        postgres=tuple(info.pg_targets()),
        local=info,
    )


async def run_scenario(
    info: ClusterInfo, cluster: LocalCluster | None, name: str, faults: list[str], **params: str
) -> LocalRun:
    """Run a scenario to its end, as `coordscope run` would (no collectors needed)."""
    runner = Runner(environment(settings_for(info), cluster))
    started = await runner.start(name, params, faults)
    return await runner.wait(started.id)


LOCAL_NODES = ("redis-1", "redis-2", "redis-3", "replica-1", "zookeeper", "postgres-1", "postgres-2")
"""What ``coordscope up`` starts by default, in its order."""


def running(pid: int) -> bool:
    """Is this process alive (a zombie is not)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cli(info: ClusterInfo, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``coordscope ARGS...`` as a user runs it, on the test cluster."""
    return cli_in(info.state_dir, *args, timeout=timeout)


def cli_in(state: str | Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``coordscope ARGS...`` as a user runs it, with this state folder."""
    env = {**os.environ, "COORDSCOPE_STATE": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=Path(__file__).parent,
    )


@contextlib.contextmanager
def cluster_up(state: Path, *flags: str) -> Iterator[tuple[LocalCluster, ClusterInfo]]:
    """`coordscope up FLAGS` in this state folder, as a user runs it; `down` at the end
    must stop exactly the processes it started."""
    cluster = LocalCluster(state)
    try:
        started = cli_in(state, "up", *flags)
        assert started.returncode == 0, started.stderr
        info = cluster.load()
        assert info is not None
        yield cluster, info
    finally:
        before = cluster.load()
        stopped = cli_in(state, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert before is not None and not any(alive(m) for m in before.members)


@contextlib.contextmanager
def serving(core: Core, probe: str = "/api/state") -> Iterator[str]:
    """The web app of ``core`` under a real uvicorn on a free port, until the block ends."""
    port = free_port()
    srv = server(create_app(core), "127.0.0.1", port)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, 15, "the web server")
    try:
        yield url
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COORDSCOPE_REDIS", "COORDSCOPE_ZK", "COORDSCOPE_PG", "COORDSCOPE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.function):
            item.fixturenames.append("_tasks_dumped_before_the_timeout")


def _await_chain(awaitable: object) -> Iterator[str]:
    """Every frame a task is suspended in, outermost first, down to the future it waits on
    (Task.print_stack shows only the outermost coroutine)."""
    for _ in range(60):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        frame = frame or getattr(awaitable, "ag_frame", None)
        if frame is not None:
            yield f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        nxt = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        nxt = nxt or getattr(awaitable, "ag_await", None)
        if nxt is None:
            if frame is None:
                yield repr(awaitable)
            return
        awaitable = nxt


@pytest.fixture
async def _tasks_dumped_before_the_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """pytest-timeout shows threads, not asyncio tasks: print every task's stack shortly
    before it fires, so a hung await says where it hangs."""

    def dump() -> None:
        print("\n=== asyncio tasks still pending ===", file=sys.stderr)
        for task in asyncio.all_tasks():
            print(f"{task!r} awaits:", file=sys.stderr)
            for line in _await_chain(task.get_coro()):
                print(f"    {line}", file=sys.stderr)

    timeout = float(request.config.getini("timeout") or 90)
    handle = asyncio.get_running_loop().call_later(max(1.0, timeout - 5), dump)
    yield
    handle.cancel()
