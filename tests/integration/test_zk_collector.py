"""The ZooKeeper collector against a real server: kazoo and Curator (Java) locks, session loss."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock as KazooLock

from app.cluster import ClusterInfo
from collectors.events import Lock, Node
from collectors.state import State
from tests.conftest import observing, until, wait_until, zk_client

JAVA_SRC = Path(__file__).resolve().parent.parent / "java" / "CuratorLock.java"
CURATOR = Path("/usr/share/java/curator-recipes.jar")


def zk_lock(st: State, path: str) -> Lock | None:
    lock = st.get("lock", f"zk:zookeeper:{path}")
    return lock if isinstance(lock, Lock) else None


async def test_kazoo_lock_holder_and_waiter_then_handover(cluster: ClusterInfo, zk_root: str) -> None:
    path = f"{zk_root}/order-7"
    a, b = zk_client(cluster), zk_client(cluster)
    try:
        async with observing(cluster) as bus:
            first = KazooLock(a, path, identifier="worker-A")
            assert first.acquire(timeout=5)
            second = KazooLock(b, path, identifier="worker-B")
            waiting = threading.Thread(target=second.acquire, kwargs={"timeout": 20})
            waiting.start()
            await until(
                bus,
                lambda st: (
                    (lk := zk_lock(st, path)) is not None and lk.holder == "worker-A" and len(lk.waiters) == 1
                ),
                "worker-A holding, worker-B queued",
            )
            lock = zk_lock(bus.state, path)
            assert lock is not None and lock.layout == "kazoo"
            assert lock.waiters[0].id == "worker-B" and lock.waiters[0].watches is not None
            assert lock.fence is not None  # the holder's czxid: a usable fencing token
            first.release()
            await until(
                bus,
                lambda st: (
                    (lk := zk_lock(st, path)) is not None and lk.holder == "worker-B" and not lk.waiters
                ),
                "the hand-over",
            )
            waiting.join(5)
            second.release()
            await until(bus, lambda st: zk_lock(st, path) is None, "the lock to be free")
    finally:
        for c in (a, b):
            c.stop()
            c.close()


@pytest.fixture(scope="module")
def curator_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CURATOR.exists() or shutil.which("javac") is None:
        pytest.fail("Curator or javac missing: run `scripts/ensure-system test`")
    out = tmp_path_factory.mktemp("curator")
    subprocess.run(["javac", "-cp", str(CURATOR), "-d", str(out), str(JAVA_SRC)], check=True)
    return out


class CuratorProcess:
    """One JVM holding (or queueing for) an InterProcessMutex; stopped by its own PID."""

    def __init__(self, classes: Path, connect: str, path: str) -> None:
        self.proc = subprocess.Popen(
            ["java", "-cp", f"{CURATOR}:{classes}", "CuratorLock", connect, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def curator(curator_classes: Path, cluster: ClusterInfo) -> Iterator[list[CuratorProcess]]:
    started: list[CuratorProcess] = []
    yield started
    for p in started:
        p.stop()


async def test_curator_mutex_from_java_shows_holder_and_waiter(
    cluster: ClusterInfo, zk_root: str, curator: list[CuratorProcess], curator_classes: Path
) -> None:
    path = f"{zk_root}/curator-order-8"
    connect = cluster.member("zookeeper").address
    async with observing(cluster) as bus:
        holder = CuratorProcess(curator_classes, connect, path)
        curator.append(holder)
        wait_until(lambda: "HELD" in holder.lines, 30, "the first Curator client to hold")
        waiter = CuratorProcess(curator_classes, connect, path)
        curator.append(waiter)
        wait_until(lambda: "WAITING" in waiter.lines, 30, "the second Curator client to queue")
        await until(
            bus,
            lambda st: (lk := zk_lock(st, path)) is not None and len(lk.waiters) == 1,
            "the Curator lock with one waiter",
            timeout=10,
        )
        lock = zk_lock(bus.state, path)
        assert lock is not None and lock.layout == "curator"
        assert lock.holder is not None and lock.holder.startswith("_c_") and "-lock-" in lock.holder
        first_holder = lock.holder
        holder.release()
        wait_until(lambda: "HELD" in waiter.lines, 10, "the waiter to take over")
        await until(
            bus,
            lambda st: (lk := zk_lock(st, path)) is not None and lk.holder != first_holder and not lk.waiters,
            "the hand-over",
        )
        waiter.release()
        await until(bus, lambda st: zk_lock(st, path) is None, "the lock to be free")


async def test_session_loss_is_shown_and_the_tree_is_resynced(cluster: ClusterInfo, zk_root: str) -> None:
    other = zk_client(cluster)
    try:
        async with observing(cluster) as bus:
            collector = bus.observatory.zookeeper[0]
            other.create(f"{zk_root}/before", b"x", makepath=True)
            await until(
                bus, lambda st: st.get("key", f"zk:zookeeper:{zk_root}/before") is not None, "a znode"
            )
            client = collector.client
            assert client is not None
            session_id, password = client.client_id
            resyncs = collector.resyncs
            # expire the collector's session from outside (kazoo's own test trick): a second
            # client joins the session and closes it
            thief = KazooClient(hosts=cluster.member("zookeeper").address, client_id=(session_id, password))
            thief.start(timeout=10)
            other.create(f"{zk_root}/during", b"y")
            other.delete(f"{zk_root}/before")
            thief.stop()
            thief.close()

            def lost(st: State) -> bool:
                return any(line.text.startswith("LOST") for line in st.snapshot().log)

            await until(bus, lost, "LOST to be reported", timeout=15)
            await until(
                bus,
                lambda st: (
                    isinstance(n := st.node("zookeeper"), Node)
                    and n.status == "up"
                    and collector.resyncs > resyncs
                ),
                "a new session and a resync",
                timeout=15,
            )
            await until(
                bus,
                lambda st: (
                    st.get("key", f"zk:zookeeper:{zk_root}/during") is not None
                    and st.get("key", f"zk:zookeeper:{zk_root}/before") is None
                ),
                "the tree as it is now",
            )
    finally:
        other.stop()
        other.close()
