"""The embedded local cluster, and the faults that act on its processes.

``coordscope up`` starts, from the binaries on this machine:

- 3 independent Redis masters (``redis-1`` .. ``redis-3``; ``--masters 5`` for
  RedLock over five), keyspace notifications on, no persistence;
- ``replica-1``, a replica of ``redis-1`` (for the failover scenario);
- ``zookeeper``, one standalone ZooKeeper on the installed Java;

each on 127.0.0.1 on a free port, with its files in the state folder. What
it started is recorded in ``<state>/cluster.json``; ``up`` again finds it
there (and restarts any member that died), ``down`` stops exactly those
PIDs. A PID is only ever signalled after checking that its working
directory is still its member's folder, so a recycled PID is never touched.
``up``, ``down`` and ``restart`` hold a lock on the state folder, across
processes: a scenario restarting a node while ``down`` runs would otherwise
start a server that no state file records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from collectors.targets import RedisTarget, ZkTarget

HOST = "127.0.0.1"
ZK_JARS = (Path("/usr/share/java/zookeeper.jar"), Path("/usr/share/zookeeper/zookeeper.jar"))
START_TIMEOUT_S = 30.0


class ClusterError(RuntimeError):
    """Something the user can fix: a missing binary, a port in use, a dead node."""


@dataclass(frozen=True)
class Member:
    name: str
    kind: str
    """redis | zookeeper"""
    port: int
    role: str
    """master | replica | standalone"""
    dir: str
    argv: tuple[str, ...]
    pid: int = 0
    master: str | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


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
        return [m for m in self.members if m.kind == "redis" and m.role == "master"]

    def redis_targets(self) -> list[RedisTarget]:
        return [RedisTarget(id=m.name, host=HOST, port=m.port) for m in self.members if m.kind == "redis"]

    def zk_targets(self) -> list[ZkTarget]:
        return [ZkTarget(id=m.name, hosts=m.address) for m in self.members if m.kind == "zookeeper"]

    def describe(self) -> list[str]:
        lines = []
        for m in self.members:
            what = m.role if m.master is None else f"{m.role} of {m.master}"
            lines.append(f"{m.name:<11} {m.kind:<9} {m.address:<16} {what:<18} pid {m.pid}")
        return lines


PORT_RANGE = (20000, 30000)
"""Below Linux's ephemeral range (32768-60999): a port the kernel hands out for some
client's outgoing connection cannot steal ours between choosing it and binding it."""


def free_port() -> int:
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free port on {HOST} between {PORT_RANGE[0]} and {PORT_RANGE[1]}")


def alive(member: Member) -> bool:
    """Is this member's PID running (not a zombie) and still ours?"""
    if member.pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{member.pid}/stat").read_text()
        cwd = os.readlink(f"/proc/{member.pid}/cwd")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    # redis-server rewrites its command line, so we recognise our processes by their
    # working directory: each member runs in its own folder of the state folder. A JVM
    # may step out of it for a moment while starting; its command line still names
    # the member's config file, inside that folder.
    if cwd == member.dir:
        return True
    try:
        argv = Path(f"/proc/{member.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    inside = member.dir.rstrip("/").encode() + b"/"
    return member.kind == "zookeeper" and any(a.startswith(inside) for a in argv)


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
            members = tuple(Member(**{**m, "argv": tuple(m["argv"])}) for m in data["members"])
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

    def up(self, masters: int | None = None) -> tuple[ClusterInfo, bool]:
        """Start the cluster, or find it running. Returns (info, started_anything)."""
        if masters is not None and masters < 1:
            raise ClusterError("--masters must be at least 1")
        with self._exclusive():
            return self._up(masters)

    def _up(self, masters: int | None) -> tuple[ClusterInfo, bool]:
        info = self.load()
        if info is not None and masters is not None:
            have = sum(1 for m in info.members if m.name.startswith("redis-"))
            if have != masters:
                raise ClusterError(
                    f"the cluster in {self.state_dir} has {have} masters; "
                    f"run `coordscope down` first to start one with {masters}"
                )
        if info is None:
            info = self._plan(masters or 3)
        started = False
        members = []
        for m in info.members:
            if not alive(m):
                m = self._spawn(m)
                started = True
            members.append(m)
        info = replace(info, members=tuple(members))
        self._save(info)
        try:
            for m in info.members:
                self._await_ready(m)
        except ClusterError:
            self._down()
            raise
        return info, started

    def _plan(self, masters: int) -> ClusterInfo:
        redis = _which("redis-server", "redis-server")
        java = _which("java", "default-jre-headless")
        jar = next((j for j in ZK_JARS if j.exists()), None)
        if jar is None:
            raise ClusterError("ZooKeeper not found: install it with `sudo apt-get install zookeeper`")
        base = self.state_dir.resolve()
        members: list[Member] = []
        used: set[int] = set()

        def port() -> int:
            p = free_port()
            while p in used:
                p = free_port()
            used.add(p)
            return p

        for i in range(1, masters + 1):
            members.append(self._redis_member(redis, base, f"redis-{i}", port()))
        first = members[0]
        members.append(self._redis_member(redis, base, "replica-1", port(), master=first))
        zk_dir = base / "zookeeper"
        zk_port = port()
        members.append(
            Member(
                name="zookeeper",
                kind="zookeeper",
                port=zk_port,
                role="standalone",
                dir=str(zk_dir),
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
                    "org.apache.zookeeper.server.ZooKeeperServerMain",
                    str(zk_dir / "zoo.cfg"),
                ),
            )
        )
        return ClusterInfo(state_dir=str(base), members=tuple(members))

    @staticmethod
    def _redis_member(redis: str, base: Path, name: str, port: int, master: Member | None = None) -> Member:
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
        ]
        if master is not None:
            argv += ["--replicaof", HOST, str(master.port)]
        return Member(
            name=name,
            kind="redis",
            port=port,
            dir=str(d),
            argv=tuple(argv),
            role="replica" if master else "master",
            master=master.name if master else None,
        )

    def _spawn(self, m: Member) -> Member:
        d = Path(m.dir)
        d.mkdir(parents=True, exist_ok=True)
        if m.kind == "zookeeper":
            (d / "data").mkdir(exist_ok=True)
            (d / "zoo.cfg").write_text(
                "tickTime=500\n"
                f"dataDir={d / 'data'}\n"
                f"clientPort={m.port}\nclientPortAddress={HOST}\n"
                "minSessionTimeout=1000\nmaxSessionTimeout=60000\n"
                "admin.enableServer=false\n4lw.commands.whitelist=*\n"
                "maxClientCnxns=0\n"
            )
        log = open(d / "process.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                m.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=d
            )
        finally:
            log.close()
        self._children[proc.pid] = proc
        return replace(m, pid=proc.pid)

    def _await_ready(self, m: Member) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            child = self._children.get(m.pid)
            # our own child: ask the kernel whether it exited (its /proc entries can read
            # oddly for a moment while it starts); one from an earlier `up`: by /proc
            if (child.poll() is not None) if child is not None else not alive(m):
                log = Path(m.dir) / ("process.log" if m.kind == "zookeeper" else "redis.log")
                tail = _tail(log)
                raise ClusterError(f"{m.name} exited while starting; its log says: {tail}")
            if _answers(m):
                return
            time.sleep(0.05)
        raise ClusterError(f"{m.name} did not answer on {m.address} within {START_TIMEOUT_S:.0f} s")

    def down(self) -> list[str]:
        """Stop every recorded member; returns the names of those that were running."""
        with self._exclusive():
            return self._down()

    def _down(self) -> list[str]:
        info = self.load()
        if info is None:
            return []
        stopped = [m.name for m in info.members if alive(m)]
        self._signal_all(info.members, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(m) for m in info.members):
            self._reap()
            time.sleep(0.05)
        self._signal_all(info.members, signal.SIGKILL)
        self._reap()
        self._file.unlink(missing_ok=True)
        return stopped

    def _signal_all(self, members: Iterable[Member], sig: signal.Signals) -> None:
        for m in members:
            if alive(m):
                self._signal(m, sig)

    def _signal(self, m: Member, sig: signal.Signals) -> None:
        if not alive(m):
            raise ClusterError(f"{m.name} (pid {m.pid}) is not running")
        if sig != signal.SIGCONT and _stopped(m.pid):
            os.kill(m.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        os.kill(m.pid, sig)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    # ------------------------------------------------------------------ faults

    def kill(self, name: str) -> Member:
        """SIGKILL one member (a crash: no shutdown, no save)."""
        info = self._require()
        m = info.member(name)
        self._signal(m, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(m) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        return m

    def restart(self, name: str) -> Member:
        """Start a member again on the same port (empty: there is no persistence)."""
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
        self._signal(m, signal.SIGSTOP)
        return m

    def resume(self, name: str) -> Member:
        m = self._require().member(name)
        self._signal(m, signal.SIGCONT)
        return m

    def _require(self) -> ClusterInfo:
        info = self.load()
        if info is None:
            raise ClusterError(f"no local cluster in {self.state_dir}: run `coordscope up`")
        return info


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "T"


def _answers(m: Member) -> bool:
    """Does the member serve requests yet? (Redis: PING; ZooKeeper: ``srvr`` says a mode.)"""
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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
