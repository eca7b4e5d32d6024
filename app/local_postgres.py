"""PostgreSQL in the local cluster: ``postgres-1``, the business database, and ``postgres-2``.

Scenarios keep business data here (a ledger, accounts, XA participants, outbox
tables); coordination state stays in Redis and ZooKeeper.

- **Binaries.** Debian's ``/usr/lib/postgresql/<major>/bin``: the newest major
  installed, unless the member's data folder was made by another installed one
  (a data folder only opens with the major that made it).
- **Root.** ``initdb`` and ``postgres`` refuse to run as root. When coordscope
  runs as root they run as the ``postgres`` system user that Debian's package
  creates (the child switches user before it executes them), on a folder that
  user owns. The state folder often lies under a folder only root may enter
  (``/root/...``, pytest's ``/tmp/pytest-of-root/...``), where that user could
  not reach its data; so, as root, the member's real folder is
  ``/var/tmp/coordscope-pg/<hash of the state folder>/postgres-1`` (owned by
  ``postgres``, mode 0700) and the state folder holds a symlink ``postgres-1``
  to it. The next ``up`` run as root removes such folders whose state folder is
  gone (when nothing runs in them).
- **First start.** ``initdb`` (trust authentication, superuser ``coordscope``)
  writes into ``data.init``, renamed ``data`` once complete, so a half-made data
  folder is never taken for a whole one; the database ``coordscope`` is created
  by the first readiness check. The data stays across ``down`` and ``up``.
- **Settings.** 127.0.0.1 only and no unix sockets (no shared socket folder to
  own); ``max_prepared_transactions`` for two-phase commit; ``fsync=off``, as a
  lab may: a killed server loses nothing (the kernel keeps what it wrote), only
  a machine crash could, and ``synchronous_commit`` stays on.
- **Stop.** SIGINT is PostgreSQL's fast shutdown (SIGTERM is a smart one, which
  waits for every client to leave).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from app.cluster_member import HOST, ClusterError, Member, processes_under, tail

PG_ROOT = Path("/usr/lib/postgresql")
RUNTIME_ROOT = Path("/var/tmp/coordscope-pg")
SYSTEM_USER = "postgres"
USER = "coordscope"
"""The superuser initdb makes; trust authentication, so no password."""
DATABASE = "coordscope"
SETTINGS: dict[str, str] = {"max_prepared_transactions": "64", "fsync": "off"}
"""What the lab needs of the server, beyond where it listens (docker-compose.yml passes
the same; tests/unit/test_compose.py compares them)."""
STOP_SIGNAL = signal.SIGINT
INITDB_TIMEOUT_S = 120.0


def _major(name: str) -> tuple[int, ...] | None:
    parts = name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def bindir(folder: Path) -> Path:
    """The folder of ``initdb`` and ``postgres`` to run the member in ``folder`` with."""
    installed: dict[tuple[int, ...], Path] = {}
    for server in PG_ROOT.glob("*/bin/postgres"):
        major = _major(server.parent.parent.name)
        if major is not None and (server.parent / "initdb").exists():
            installed[major] = server.parent
    if not installed:
        raise ClusterError(
            f"PostgreSQL not found (no {PG_ROOT}/*/bin/postgres): "
            "install it with `sudo apt-get install postgresql`"
        )
    try:
        made_by = _major((folder / "data" / "PG_VERSION").read_text().strip())
    except OSError:
        made_by = None
    return installed.get(made_by or (), installed[max(installed)])


def system_user() -> pwd.struct_passwd | None:
    """Whom to run PostgreSQL as: ourselves, or (as root) the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise ClusterError(
            f"PostgreSQL refuses to run as root and there is no `{SYSTEM_USER}` user to run it as: "
            "install it with `sudo apt-get install postgresql` (which creates one)"
        ) from None


def folder(state: Path, name: str) -> Path:
    """Where the member's folder really is (see the module's docstring)."""
    if os.geteuid() != 0:
        return state / name
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:16]
    return RUNTIME_ROOT / digest / name


def argv(binaries: Path, home: Path, port: int) -> tuple[str, ...]:
    args = [str(binaries / "postgres"), "-D", str(home / "data"), "-p", str(port)]
    args += ["-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]
    for name, value in SETTINGS.items():
        args += ["-c", f"{name}={value}"]
    return tuple(args)


def prepare(m: Member, state: Path) -> None:
    """Make the member's folder ready to start in: owned by whom it runs as, with an
    initialised data folder and no stale lock file. Only runs while nothing of the
    member runs (the caller's lock on the state folder, and its check)."""
    try:
        _prepare(m, state)
    except OSError as exc:
        raise ClusterError(f"cannot prepare the folder of {m.name}, {m.dir}: {exc}") from None


def _prepare(m: Member, state: Path) -> None:
    home = Path(m.dir)
    owner = system_user()
    if owner is None:
        home.mkdir(parents=True, exist_ok=True)
    else:
        _root_only(RUNTIME_ROOT)
        _root_only(home.parent)
        (home.parent / "state").write_text(str(state))
        _prune(keep=home.parent)
        home.mkdir(mode=0o700, exist_ok=True)
        if home.is_symlink():
            raise ClusterError(f"{home} is a symlink, not a folder: remove it")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        home.chmod(0o700)
        _link(state / m.name, home)
    data = home / "data"
    if not data.is_dir():
        _initdb(m, home, owner)
    elif not processes_under(str(data)):
        # the lock file of a killed server names its PID, which the kernel may have
        # handed to another process since: PostgreSQL would then refuse to start
        (data / "postmaster.pid").unlink(missing_ok=True)


def _initdb(m: Member, home: Path, owner: pwd.struct_passwd | None) -> None:
    partial = home / "data.init"
    shutil.rmtree(partial, ignore_errors=True)
    log_path = home / "initdb.log"
    command = [
        str(Path(m.argv[0]).parent / "initdb"),
        *("-D", str(partial), "-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
    ]
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=home,
                timeout=INITDB_TIMEOUT_S,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"initdb for {m.name} took over {INITDB_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ClusterError(f"initdb for {m.name} failed; its log says: {tail(log_path)}")
    partial.rename(home / "data")


def ready(port: int) -> bool:
    """Does the database answer ``SELECT 1``? On the first start it does not exist yet:
    create it, once the server answers."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(host=HOST, port=port, user=USER, dbname=DATABASE, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
            return True
    except psycopg.Error as exc:
        # a failed connection carries no SQLSTATE: tell "no database yet" by its message
        # (initdb --locale=C: the server speaks English)
        if f'database "{DATABASE}" does not exist' not in str(exc):
            return False  # not up yet
    try:
        with psycopg.connect(
            host=HOST, port=port, user=USER, dbname="postgres", connect_timeout=1, autocommit=True
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    except psycopg.Error:
        pass  # asked again at the next check
    return False


def _root_only(path: Path) -> None:
    """A folder the ``postgres`` user may pass through and nobody but root may change
    (``/var/tmp`` is writable by all: someone could have made it first)."""
    path.mkdir(exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise ClusterError(f"{path} must be a folder owned by root that only root may write to: remove it")
    path.chmod(0o755)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return
        link.unlink()
    elif link.exists():
        raise ClusterError(
            f"{link} is in the way of the link to {target} that coordscope needs when run as "
            "root: remove it (a folder there holds the PostgreSQL data of a run as another user)"
        )
    link.symlink_to(target)


def _prune(keep: Path) -> None:
    """Remove folders of RUNTIME_ROOT whose state folder is gone and where nothing runs."""
    for entry in RUNTIME_ROOT.iterdir():
        if entry == keep or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            state = Path((entry / "state").read_text())
        except OSError:
            continue  # not one of ours, or being made
        if not state.exists() and not processes_under(str(entry)):
            shutil.rmtree(entry, ignore_errors=True)
