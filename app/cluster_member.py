"""A member of the local cluster, and how to tell that a process is one of ours.

A PID alone is not an identity: the kernel hands a dead member's PID to the next
process it starts (``pid_max`` is 32768 on many machines). So a member is
recognised by its working directory, which is its own folder of the state
folder, before it is ever signalled.

A server can be more than one process: a Redis save child, PostgreSQL's
postmaster with a backend per client and its background workers. A crash or
a pause must act on all of them, as a machine's would. Every member starts in
a session of its own, but a process group does not hold a PostgreSQL server:
each of its child processes calls ``setsid()`` and leads a group of its own.
So a member's processes are its leader and every process that runs the
leader's program in the member's working directory (forks keep both), which
also finds what a leader killed alone left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """Something the user can fix: a missing binary, a port in use, a dead node."""


@dataclass(frozen=True)
class Member:
    name: str
    kind: str
    """redis | zookeeper | postgres"""
    port: int
    role: str
    """master | replica | standalone | ensemble | database (an ensemble member's live
    role, leader or follower, and a Redis Cluster member's, are read by the collectors)"""
    dir: str
    """Its folder, a real path (for PostgreSQL run by root: outside the state folder,
    which holds a symlink to it)."""
    argv: tuple[str, ...]
    pid: int = 0
    master: str | None = None
    peers: tuple[str, ...] = ()
    """A ZooKeeper ensemble member's ``server.N=127.0.0.1:peerPort:electionPort`` lines
    (every member of the ensemble has the same); empty for a standalone server."""
    myid: int = 0
    """A ZooKeeper ensemble member's id: its ``N`` in those lines (its ``myid`` file)."""
    cluster: str | None = None
    """The Redis Cluster a Redis member belongs to (``up --redis-cluster``); its
    ``role`` and ``master`` are then only where it started: the cluster moves them."""

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def cwd(self) -> str:
        """Where its processes run: its folder; PostgreSQL's, the data folder inside it
        (the postmaster changes into its data folder, and its backends inherit it)."""
        return f"{self.dir}/data" if self.kind == "postgres" else self.dir


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def alive(member: Member) -> bool:
    """Is this member's PID running (not a zombie) and still ours?"""
    if member.pid <= 0:
        return False
    stat = _stat(member.pid)
    try:
        cwd = os.readlink(f"/proc/{member.pid}/cwd")
    except OSError:
        return False
    if stat is None or stat[0] == "Z":
        return False
    # redis-server rewrites its command line, so we recognise our processes by their
    # working directory: each member runs in its own folder of the state folder. A JVM
    # may step out of it for a moment while starting; its command line still names
    # the member's config file, inside that folder.
    if cwd == member.cwd:
        return True
    try:
        argv = Path(f"/proc/{member.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    inside = member.dir.rstrip("/").encode() + b"/"
    return member.kind == "zookeeper" and any(a.startswith(inside) for a in argv)


def stopped(pid: int) -> bool:
    """Is the process stopped (SIGSTOP)?"""
    stat = _stat(pid)
    return stat is not None and stat[0] == "T"


def exited(pid: int) -> bool:
    """Has this process finished dying (gone, or a zombie)? One just killed may run its exit
    for a moment after /proc stops showing its folder and program."""
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"


def leads_its_group(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] == str(pid)


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def processes_of(member: Member) -> list[int]:
    """The member's live processes: its leader while it lives, and every process that
    runs the leader's program in the member's working directory."""
    found = [member.pid] if alive(member) else []
    if not member.argv:
        return found
    program = os.path.realpath(member.argv[0])
    for pid in _pids():
        if pid == member.pid:
            continue
        try:
            if os.readlink(f"/proc/{pid}/cwd") != member.cwd or os.readlink(f"/proc/{pid}/exe") != program:
                continue
        except OSError:
            continue
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z":
            found.append(pid)
    return found


def processes_under(folder: str) -> list[int]:
    """PIDs whose working directory is ``folder`` or inside it (whoever started them)."""
    inside = folder.rstrip("/") + "/"
    found = []
    for pid in _pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == folder or cwd.startswith(inside):
            found.append(pid)
    return found


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log, on one line (for an error message)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
