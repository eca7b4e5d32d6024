"""The embedded local cluster, and the faults that act on its processes.

``coordscope up`` starts, from the binaries on this machine:

- 3 independent Redis masters (``redis-1`` .. ``redis-3``; ``--masters 5`` for
  RedLock over five), keyspace notifications on, no persistence;
- ``replica-1``, a replica of ``redis-1`` (for the failover scenario); or, with
  ``--redis-cluster``, instead of those: a Redis Cluster ``cluster-1`` ..
  ``cluster-6``, three primaries and a replica of each (:mod:`app.redis_cluster`),
  watched as a cluster whose topology the collectors follow;
- ``zookeeper``, one standalone ZooKeeper on the installed Java; or, with
  ``--zk-ensemble 3``, an ensemble ``zookeeper-1`` .. ``zookeeper-3`` (each its own
  folder, ``myid`` and client port; ``server.N=127.0.0.1:peerPort:electionPort``
  lines naming all of them), watched as one target by a connect string listing
  every server;
- ``postgres-1`` and ``postgres-2``, PostgreSQL: the business database, and a second
  server for the participants of a distributed transaction (see
  :mod:`app.local_postgres`: run as root, their data lives outside the state folder,
  which links to it);

each on 127.0.0.1 on a free port, with its files in the state folder. What
it started is recorded in ``<state>/cluster.json``; ``up`` again finds it
there (and restarts any member that died), ``down`` stops exactly those
PIDs. A PID is only ever signalled after checking that its working
directory is still its member's folder, so a recycled PID is never touched
(:mod:`app.cluster_member`). A crash (``kill``) and a pause act on every
process of the member: PostgreSQL is a postmaster and its backends.
``up``, ``down`` and ``restart`` hold a lock on the state folder, across
processes: a scenario restarting a node while ``down`` runs would otherwise
start a server that no state file records.

Redis members start empty, every time: no snapshots, no append-only file,
a replica loads a full sync from the socket instead of a file, and any
``dump.rdb`` or AOF that something else left in the folder (a ``SAVE``)
is removed before the server starts. A restarted master that loaded old
keys would bring back locks everyone saw deleted. ZooKeeper and PostgreSQL
keep their data, as they would in production.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from app import local_postgres
from app import redis_cluster as redis_cluster_of
from app.cluster_member import (
    HOST,
    ClusterError,
    Member,
    alive,
    exited,
    leads_its_group,
    processes_of,
    stopped,
    tail,
)
from collectors.targets import PostgresTarget, RedisTarget, ZkTarget, free_port

# Member, alive and ClusterError live in app.cluster_member; importers find them here too
__all__ = [
    "HOST",
    "ZOO_CFG",
    "ZOO_ENSEMBLE_CFG",
    "ClusterError",
    "ClusterInfo",
    "LocalCluster",
    "Member",
    "alive",
    "free_port",
]

ZK_JARS = (Path("/usr/share/java/zookeeper.jar"), Path("/usr/share/zookeeper/zookeeper.jar"))
START_TIMEOUT_S = 30.0
ZOO_CFG: dict[str, str] = {
    "tickTime": "500",
    "minSessionTimeout": "1000",
    "maxSessionTimeout": "60000",
    "admin.enableServer": "false",
    "4lw.commands.whitelist": "*",
    "maxClientCnxns": "0",
    "forceSync": "no",
}
"""ZooKeeper's settings beyond where it keeps data and listens (docker-compose.yml
passes the same). ``forceSync=no``: its transaction log is written but not fsynced, as
PostgreSQL here runs with ``fsync=off`` — a lab on one machine, where a write's cost is
the protocol's, not the disk's (a crashed process loses nothing; only the machine's
crash would)."""
ZOO_ENSEMBLE_CFG: dict[str, str] = {"initLimit": "10", "syncLimit": "5"}
"""An ensemble member's settings on top of those: followers get 10 ticks (5 s) to
connect and sync with a leader, and fall out after 5 ticks without it."""
REDIS_DATA_FILES = ("dump.rdb", "temp-*.rdb", "appendonly.aof*", "appendonlydir", "temp-*.aof")
"""What a Redis server would load, or half-wrote, in its folder."""
STOP_SIGNALS = {"postgres": local_postgres.STOP_SIGNAL}
PG_NAMES = ("postgres-1", "postgres-2")
"""Two PostgreSQL servers: a distributed transaction's participants are two databases,
so that a participant's crash is a real crash of one of them."""
"""How ``down`` asks a member to stop (SIGTERM unless named here)."""


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: str
    members: tuple[Member, ...] = field(default_factory=tuple)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ClusterError(
            f"no node named {name!r} in the local cluster (it has {', '.join(m.name for m in self.members)})"
        )

    @property
    def masters(self) -> list[Member]:
        """The Redis masters it started with (a Redis Cluster's primaries move later)."""
        return [m for m in self.members if m.kind == "redis" and m.role == "master"]

    @property
    def redis_cluster(self) -> bool:
        """Is its Redis a Redis Cluster (``up --redis-cluster``)?"""
        return any(m.cluster for m in self.members)

    def redis_targets(self) -> list[RedisTarget]:
        return [
            RedisTarget(id=m.name, host=HOST, port=m.port, cluster=m.cluster)
            for m in self.members
            if m.kind == "redis"
        ]

    def zk_targets(self) -> list[ZkTarget]:
        """One target: the standalone server, or every server of the ensemble in one
        connect string (id ``zookeeper`` either way)."""
        servers = [m for m in self.members if m.kind == "zookeeper"]
        if not servers:
            return []
        return [ZkTarget(id="zookeeper", hosts=",".join(m.address for m in servers))]

    def pg_targets(self) -> list[PostgresTarget]:
        return [
            PostgresTarget(
                id=m.name, host=HOST, port=m.port, user=local_postgres.USER, dbname=local_postgres.DATABASE
            )
            for m in self.members
            if m.kind == "postgres"
        ]

    def describe(self) -> list[str]:
        lines = []
        for m in self.members:
            what = m.role if m.master is None else f"{m.role} of {m.master}"
            if m.cluster:
                what = f"{m.cluster}: {'primary' if m.master is None else f'replica of {m.master}'}"
            lines.append(f"{m.name:<11} {m.kind:<9} {m.address:<16} {what:<26} pid {m.pid}")
        return lines


def _which(binary: str, install: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ClusterError(f"{binary} not found: install it with `sudo apt-get install {install}`")
    return path


class LocalCluster:
    """The processes of one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._file = state_dir / "cluster.json"
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ state file

    def load(self) -> ClusterInfo | None:
        try:
            data = json.loads(self._file.read_text())
            members = tuple(
                Member(**{**m, "argv": tuple(m["argv"]), "peers": tuple(m.get("peers", ()))})
                for m in data["members"]
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(
                f"{self._file} is unreadable ({exc}); remove it and run `coordscope up` again"
            ) from None
        return ClusterInfo(state_dir=str(self.state_dir), members=members)

    def _save(self, info: ClusterInfo) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "members": [asdict(m) for m in info.members]}, indent=2))
        tmp.replace(self._file)

    def running(self) -> ClusterInfo | None:
        """The recorded cluster if every member is alive, else None."""
        info = self.load()
        if info is None or not all(alive(m) for m in info.members):
            return None
        return info

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One of up / down / restart at a time on this state folder, in any process."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ up / down

    def up(
        self, masters: int | None = None, zk_ensemble: int | None = None, redis_cluster: bool | None = None
    ) -> tuple[ClusterInfo, bool]:
        """Start the cluster, or find it running. Returns (info, started_anything).
        ``zk_ensemble``: ZooKeeper servers (1, the default, is a standalone server);
        ``redis_cluster``: a Redis Cluster instead of the independent masters and replica
        (None: whichever runs, or the independent masters)."""
        if masters is not None and masters < 1:
            raise ClusterError("--masters must be at least 1")
        if masters is not None and redis_cluster:
            raise ClusterError("--masters counts independent masters: a Redis Cluster has none")
        if zk_ensemble is not None and (zk_ensemble < 1 or zk_ensemble % 2 == 0):
            raise ClusterError("--zk-ensemble must be an odd number (1, 3, 5...): a majority must survive")
        with self._exclusive():
            return self._up(masters, zk_ensemble, redis_cluster)

    def _up(
        self, masters: int | None, zk_ensemble: int | None, redis_cluster: bool | None = None
    ) -> tuple[ClusterInfo, bool]:
        info = self.load()
        fresh = info is None
        if info is not None and redis_cluster is not None and info.redis_cluster != redis_cluster:
            running = "a Redis Cluster" if info.redis_cluster else "independent Redis masters"
            raise ClusterError(
                f"the cluster in {self.state_dir} has {running}; run `coordscope down` first to start "
                + ("one with a Redis Cluster" if redis_cluster else "one with independent masters")
            )
        if info is not None:
            for flag, wanted, have in (
                ("masters", masters, sum(1 for m in info.members if m.name.startswith("redis-"))),
                ("ZooKeeper servers", zk_ensemble, sum(1 for m in info.members if m.kind == "zookeeper")),
            ):
                if wanted is not None and have != wanted:
                    raise ClusterError(
                        f"the cluster in {self.state_dir} has {have} {flag}; "
                        f"run `coordscope down` first to start one with {wanted}"
                    )
        if info is None:
            info = self._plan(masters or 3, zk_ensemble or 1, bool(redis_cluster))
        started = False
        members = list(info.members)
        try:
            for i, m in enumerate(members):
                if not alive(m):
                    if fresh and m.cluster:
                        redis_cluster_of.forget(m)  # a new cluster: not the last one's nodes
                    members[i] = self._spawn(m)
                    started = True
            info = replace(info, members=tuple(members))
            self._save(info)
            for m in info.members:
                self._await_ready(m)
            if info.redis_cluster:
                redis_cluster_of.form([m for m in info.members if m.cluster])
        except BaseException:  # a member that would not start, or Ctrl-C during initdb
            # record what did start (a later member may have failed to), then stop it all
            self._save(replace(info, members=tuple(members)))
            self._down()
            raise
        return info, started

    def _plan(self, masters: int, zk_servers: int = 1, redis_cluster: bool = False) -> ClusterInfo:
        redis = _which("redis-server", "redis-server")
        java = _which("java", "default-jre-headless")
        jar = next((j for j in ZK_JARS if j.exists()), None)
        if jar is None:
            raise ClusterError("ZooKeeper not found: install it with `sudo apt-get install zookeeper`")
        base = self.state_dir.resolve()
        pg_homes = [local_postgres.folder(base, name) for name in PG_NAMES]
        pg_binaries = local_postgres.bindir(pg_homes[0])
        local_postgres.system_user()  # as root: is there a user to run it as?
        members: list[Member] = []
        used: set[int] = set()

        def port() -> int:
            p = free_port()
            while p in used:
                p = free_port()
            used.add(p)
            return p

        if redis_cluster:
            for name, primary in redis_cluster_of.names():
                members.append(
                    self._redis_member(
                        redis, base, name, port(), in_cluster=True, cluster_primary=primary, bus_port=port()
                    )
                )
        else:
            for i in range(1, masters + 1):
                members.append(self._redis_member(redis, base, f"redis-{i}", port()))
            first = members[0]
            members.append(self._redis_member(redis, base, "replica-1", port(), master=first))
        if zk_servers == 1:
            members.append(_zk_member(java, jar, base, "zookeeper", port()))
        else:
            ids = range(1, zk_servers + 1)
            peers = tuple(f"server.{i}={HOST}:{port()}:{port()}" for i in ids)
            members += [_zk_member(java, jar, base, f"zookeeper-{i}", port(), peers, i) for i in ids]
        for name, pg_home in zip(PG_NAMES, pg_homes, strict=True):
            pg_port = port()
            members.append(
                Member(
                    name=name,
                    kind="postgres",
                    port=pg_port,
                    role="database",
                    dir=str(pg_home),
                    argv=local_postgres.argv(pg_binaries, pg_home, pg_port),
                )
            )
        return ClusterInfo(state_dir=str(base), members=tuple(members))

    @staticmethod
    def _redis_member(
        redis: str,
        base: Path,
        name: str,
        port: int,
        master: Member | None = None,
        in_cluster: bool = False,
        cluster_primary: str | None = None,
        bus_port: int = 0,
    ) -> Member:
        """An independent master, a replica of ``master``, or a member of the Redis
        Cluster (a primary, or first a replica of ``cluster_primary``)."""
        d = base / name
        argv = [
            redis,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(d),
            "--save",
            "",
            "--appendonly",
            "no",
            "--notify-keyspace-events",
            "KEA",
            "--daemonize",
            "no",
            "--logfile",
            str(d / "redis.log"),
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            # a full sync is parsed from the socket, never written to dump.rdb (which the
            # next start would load)
            "--repl-diskless-load",
            "swapdb",
        ]
        if master is not None:
            argv += ["--replicaof", HOST, str(master.port)]
        if in_cluster:
            argv += redis_cluster_of.options(d, bus_port)
        primary = master.name if master else cluster_primary
        return Member(
            name=name,
            kind="redis",
            port=port,
            dir=str(d),
            argv=tuple(argv),
            role="replica" if primary else "master",
            master=primary,
            cluster=redis_cluster_of.NAME if in_cluster else None,
        )

    def _spawn(self, m: Member) -> Member:
        """Start a member that is not running, in a session (and process group) of its own."""
        self._kill_leftovers(m)
        d = Path(m.dir)
        owner = None
        if m.kind == "postgres":
            local_postgres.prepare(m, self.state_dir.resolve())
            owner = local_postgres.system_user()
        else:
            d.mkdir(parents=True, exist_ok=True)
        if m.kind == "redis":
            _forget_redis_data(d)
        if m.kind == "zookeeper":
            _zoo_cfg(m)
        log = open(d / "process.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                m.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=m.cwd,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        finally:
            log.close()
        self._children[proc.pid] = proc
        return replace(m, pid=proc.pid)

    def _kill_leftovers(self, m: Member) -> None:
        """What is left of a dead member (a backend whose postmaster was killed alone)
        holds its port or its shared memory: end it before starting anew."""
        for pid in processes_of(m):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._await_gone(m)

    def _await_gone(self, m: Member, signalled: Sequence[int] = (), timeout: float = 5.0) -> None:
        """Until none of the member's processes is left, and each of ``signalled`` has
        finished dying."""
        deadline = time.monotonic() + timeout
        while (processes_of(m) or not all(exited(p) for p in signalled)) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)

    def _await_ready(self, m: Member) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        log = Path(m.dir) / ("redis.log" if m.kind == "redis" else "process.log")
        while time.monotonic() < deadline:
            child = self._children.get(m.pid)
            # our own child: ask the kernel whether it exited (its /proc entries can read
            # oddly for a moment while it starts); one from an earlier `up`: by /proc
            if (child.poll() is not None) if child is not None else not alive(m):
                raise ClusterError(f"{m.name} exited while starting; its log says: {tail(log)}")
            if _answers(m):
                return
            time.sleep(0.05)
        raise ClusterError(
            f"{m.name} did not answer on {m.address} within {START_TIMEOUT_S:.0f} s; "
            f"its log says: {tail(log)}"
        )

    def down(self) -> list[str]:
        """Stop every recorded member; returns the names of those that were running."""
        with self._exclusive():
            return self._down()

    def _down(self) -> list[str]:
        info = self.load()
        if info is None:
            return []
        running = [m.name for m in info.members if alive(m)]
        for m in info.members:
            if alive(m):
                self._signal(m, STOP_SIGNALS.get(m.kind, signal.SIGTERM), whole=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(m) for m in info.members):
            self._reap()
            time.sleep(0.05)
        for m in info.members:  # what did not stop, and anything its leader left behind
            self._kill_leftovers(m)
        self._reap()
        self._file.unlink(missing_ok=True)
        return running

    def _signal(self, m: Member, sig: signal.Signals, whole: bool) -> None:
        """Signal a running member: every process of it (a crash, a pause), or its leader
        alone (a shutdown request, which the server passes on in its own way)."""
        if not alive(m):
            raise ClusterError(f"{m.name} (pid {m.pid}) is not running")
        if sig != signal.SIGCONT and stopped(m.pid):
            self._signal(m, signal.SIGCONT, whole=True)  # a paused server cannot shut down
        # the leader first: a stopped or killed postmaster forks no new backend meanwhile
        if whole and leads_its_group(m.pid):
            os.killpg(m.pid, sig)
        else:
            os.kill(m.pid, sig)
        if whole:
            for pid in processes_of(m):
                if pid != m.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    # ------------------------------------------------------------------ faults

    def kill(self, name: str) -> Member:
        """SIGKILL every process of one member (a crash: no shutdown, no save)."""
        info = self._require()
        m = info.member(name)
        signalled = processes_of(m)
        self._signal(m, signal.SIGKILL, whole=True)
        self._await_gone(m, signalled)  # returns once it is dead, not while it dies
        return m

    def restart(self, name: str) -> Member:
        """Start a member again on the same port: Redis empty (no persistence), ZooKeeper
        and PostgreSQL with their data (PostgreSQL recovers from its crash)."""
        with self._exclusive():
            info = self._require()  # after a `down`: no cluster, nothing to start
            m = info.member(name)
            if alive(m):
                raise ClusterError(f"{name} is already running")
            m = self._spawn(m)
            self._save(replace(info, members=tuple(m if x.name == name else x for x in info.members)))
            self._await_ready(m)
            return m

    def pause(self, name: str) -> Member:
        m = self._require().member(name)
        self._signal(m, signal.SIGSTOP, whole=True)
        # a signal lands when the kernel next schedules its process: return once every
        # process is stopped, so a fault's window starts when the server's does
        _await(lambda: all(stopped(pid) for pid in processes_of(m)))
        return m

    def resume(self, name: str) -> Member:
        m = self._require().member(name)
        self._signal(m, signal.SIGCONT, whole=True)
        _await(lambda: not any(stopped(pid) for pid in processes_of(m)))
        return m

    def _require(self) -> ClusterInfo:
        info = self.load()
        if info is None:
            raise ClusterError(f"no local cluster in {self.state_dir}: run `coordscope up`")
        return info


def _zk_member(
    java: str, jar: Path, base: Path, name: str, port: int, peers: tuple[str, ...] = (), myid: int = 0
) -> Member:
    """A standalone ZooKeeper server, or (with ``peers``) one member of an ensemble."""
    folder = base / name
    main = (
        "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        if peers
        else "org.apache.zookeeper.server.ZooKeeperServerMain"
    )
    return Member(
        name=name,
        kind="zookeeper",
        port=port,
        role="ensemble" if peers else "standalone",
        dir=str(folder),
        argv=(
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            # no hsperfdata: HotSpot chdirs into /tmp/hsperfdata_<user> while it
            # creates that file, which made the JVM look like someone else's process
            "-XX:-UsePerfData",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            str(jar),
            main,
            str(folder / "zoo.cfg"),
        ),
        peers=peers,
        myid=myid,
    )


def _zoo_cfg(m: Member) -> None:
    """Write a ZooKeeper member's zoo.cfg (and an ensemble member's ``myid``)."""
    data = Path(m.dir) / "data"
    data.mkdir(exist_ok=True)
    settings = {"dataDir": str(data), "clientPort": str(m.port), "clientPortAddress": HOST, **ZOO_CFG}
    if m.peers:
        settings |= ZOO_ENSEMBLE_CFG
        settings |= dict(peer.split("=", 1) for peer in m.peers)
        (data / "myid").write_text(f"{m.myid}\n")
    (Path(m.dir) / "zoo.cfg").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))


def _await(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def _forget_redis_data(folder: Path) -> None:
    for pattern in REDIS_DATA_FILES:
        for path in folder.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _answers(m: Member) -> bool:
    """Does the member serve requests yet? (Redis: PING; ZooKeeper: ``srvr`` says a mode;
    PostgreSQL: its database answers ``SELECT 1``.)"""
    if m.kind == "postgres":
        return local_postgres.ready(m.port)
    try:
        with socket.create_connection((HOST, m.port), timeout=1.0) as s:
            if m.kind == "redis":
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
            s.sendall(b"srvr")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            return b"Mode:" in reply
    except OSError:
        return False
