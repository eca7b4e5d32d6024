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
from collectors.families.locks import Lock
from collectors.families.nodes import Node
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
            collector = bus.source.zookeeper[0]
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


async def test_curator_chain_moves_on_when_the_holder_process_dies(
    cluster: ClusterInfo, zk_root: str, curator: list[CuratorProcess], curator_classes: Path
) -> None:
    import time

    path = f"{zk_root}/curator-order-9"
    connect = cluster.member("zookeeper").address
    async with observing(cluster) as bus:
        for _ in range(3):
            p = CuratorProcess(curator_classes, connect, path)
            curator.append(p)
            wait_until(lambda p=p: "WAITING" in p.lines, 30, "a Curator client to queue")
        await until(
            bus,
            lambda st: (lk := zk_lock(st, path)) is not None and len(lk.waiters) == 2,
            "a holder and two waiters",
            timeout=10,
        )
        lock = zk_lock(bus.state, path)
        assert lock is not None and lock.holder is not None
        first, second = lock.waiters
        assert first.watches == lock.holder and second.watches == first.id  # the chain
        holder = next(p for p in curator if "HELD" in p.lines)
        killed = time.monotonic()
        holder.proc.kill()  # no release: ZooKeeper drops its node when its 2 s session times out
        await until(
            bus,
            lambda st: (lk := zk_lock(st, path)) is not None and lk.holder == first.id,
            "the first waiter to hold",
            timeout=10,
        )
        moved = time.monotonic() - killed
        assert moved < 2.0 + 1.0  # the session timeout, then within a second on screen


async def test_kazoo_holder_session_closed_moves_the_lock_at_once(cluster: ClusterInfo, zk_root: str) -> None:
    path = f"{zk_root}/order-8"
    clients = [zk_client(cluster) for _ in range(3)]
    try:
        async with observing(cluster) as bus:
            locks = [KazooLock(c, path, identifier=f"worker-{i}") for i, c in enumerate(clients)]
            assert locks[0].acquire(timeout=5)
            waiting = [threading.Thread(target=lk.acquire, kwargs={"timeout": 20}) for lk in locks[1:]]
            for queued, t in enumerate(waiting, start=1):
                t.start()
                await until(
                    bus,
                    lambda st, n=queued: (lk := zk_lock(st, path)) is not None and len(lk.waiters) == n,
                    "the queue to grow",
                )

            clients[0].stop()  # the holder's session closes: its node goes now
            await until(
                bus,
                lambda st: (lk := zk_lock(st, path)) is not None and lk.holder == "worker-1",
                "worker-1 to hold",
                timeout=5,  # half the 10 s session timeout: the close moved it, not an expiry
            )
            locks[1].release()
            await until(
                bus,
                lambda st: (lk := zk_lock(st, path)) is not None and lk.holder == "worker-2",
                "worker-2 to hold",
                timeout=5,
            )
            locks[2].release()
            for t in waiting:
                t.join(5)
    finally:
        for c in clients:
            c.stop()
            c.close()


async def test_a_znode_we_may_not_read_is_skipped_not_retried_for_ever(
    cluster: ClusterInfo, zk_root: str
) -> None:
    from kazoo.security import make_digest_acl

    zk = zk_client(cluster)
    try:
        secret = make_digest_acl("owner", "pw", all=True)  # nobody else may read it
        zk.ensure_path(zk_root)
        zk.create(f"{zk_root}/private", b"x", acl=[secret])
        async with observing(cluster) as bus:
            await until(
                bus,
                lambda st: any("not readable by us" in line.text for line in st.snapshot().log),
                "the unreadable znode said once",
            )
            zk.create(f"{zk_root}/after", b"y")  # the rest of the tree still moves
            await until(
                bus,
                lambda st: st.record("zookeeper", f"{zk_root}/after") is not None,
                "a znode created after it",
            )
            said = [line for line in bus.state.snapshot().log if "not readable by us" in line.text]
            assert len(said) == 1 and f"{zk_root}/private" in said[0].text
    finally:
        zk.delete(f"{zk_root}/private")  # its parent's ACL says who may delete it
        zk.delete(zk_root, recursive=True)
        zk.stop()
        zk.close()
