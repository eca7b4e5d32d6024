"""HAProxy in front of a run's app instances: its configuration, generated; its process,
started and stopped by PID; its view of the servers, read from its stats socket.

Where a deployment would put a load balancer (the sessions scenario), a run starts
Debian's ``haproxy`` (``scripts/ensure-system`` installs it) from a configuration of
its own, on a free loopback port, in the foreground (``-db``) and in its own session,
so that the run can signal it and nothing else. What it does:

- ``balance roundrobin`` over the instances, each checked with ``GET /healthz``
  every ``check_ms`` (down after 2 failures, up after 1 success): a killed instance
  stops getting requests within about two checks;
- with ``sticky=True``, HAProxy's cookie stickiness (``cookie SERVERID insert
  indirect nocache``): a client that sent the cookie goes back to the instance that
  set it, for as long as that instance is up;
- a stats socket (``show stat``), which :meth:`Balancer.servers` reads: each server's
  status (UP, DOWN, MAINT, ``no check``) as HAProxy sees it.

Error handling
--------------
A configuration HAProxy refuses, or a port it cannot bind, makes it exit at once:
:meth:`Balancer.start` then raises :class:`BalancerError` with the last lines it
printed. A balancer that is not running answers :meth:`servers` with an empty list.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT_S = 10.0


class BalancerError(RuntimeError):
    """HAProxy could not be started (missing, a refused configuration, a taken port)."""


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class ServerState:
    name: str
    status: str
    """UP, DOWN, MAINT, ``no check``... as HAProxy's stats say."""
    sessions: int = 0
    """Requests (sessions, in HAProxy's words) it has sent this server in all."""


def config(
    port: int, backends: list[Backend], socket_path: str, sticky: bool = False, check_ms: int = 300
) -> str:
    """The configuration HAProxy runs with (names are ours: letters, digits, ``-``)."""
    for b in backends:
        if not b.name or not all(c.isalnum() or c == "-" for c in b.name):
            raise ValueError(f"a backend name must be letters, digits and '-': {b.name!r}")
    lines = [
        "global",
        "    maxconn 512",
        f"    stats socket {socket_path} mode 600 level operator",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    option redispatch",
        "    retries 1",
        "frontend web",
        f"    bind 127.0.0.1:{port}",
        "    default_backend apps",
        "backend apps",
        "    balance roundrobin",
        "    option httpchk GET /healthz",
        f"    default-server inter {check_ms}ms fall 2 rise 1",
    ]
    if sticky:
        lines.append("    cookie SERVERID insert indirect nocache")
    for b in backends:
        cookie = f" cookie {b.name}" if sticky else ""
        lines.append(f"    server {b.name} {b.host}:{b.port} check{cookie}")
    return "\n".join(lines) + "\n"


def parse_stat(csv: str) -> list[ServerState]:
    """The servers of ``show stat`` (its CSV; the frontend and backend rows left out)."""
    lines = csv.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    try:
        name_at, status_at, total_at = header.index("svname"), header.index("status"), header.index("stot")
    except ValueError:
        return []
    out = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) <= max(name_at, status_at, total_at):
            continue
        name = cells[name_at]
        if name in ("FRONTEND", "BACKEND"):
            continue
        total = cells[total_at]
        out.append(ServerState(name, cells[status_at], int(total) if total.isdigit() else 0))
    return out


@dataclass
class Balancer:
    """One HAProxy process of a run, in ``folder`` (its config, socket and log)."""

    folder: Path
    port: int
    backends: list[Backend]
    sticky: bool = False
    check_ms: int = 300
    owner: str = ""
    """The run it belongs to, on its command line (``-L``, its peer name, unused otherwise): a
    run's janitor signals only processes whose command line names the run."""
    proc: asyncio.subprocess.Process | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def socket_path(self) -> Path:
        return self.folder / "haproxy.sock"

    async def start(self) -> None:
        if shutil.which(HAPROXY) is None:
            raise BalancerError(f"{HAPROXY} is missing (scripts/ensure-system installs haproxy)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(config(self.port, self.backends, str(self.socket_path), self.sticky, self.check_ms))
        log = open(self.folder / "haproxy.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        try:
            owner = ["-L", self.owner] if self.owner else []
            self.proc = await asyncio.create_subprocess_exec(
                HAPROXY, "-f", str(cfg), "-db", *owner,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not await self._ready():
            if self.proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                raise BalancerError(f"haproxy did not start on {self.address}: {self.log_tail()}")
            await asyncio.sleep(0.02)

    async def _ready(self) -> bool:
        """Its stats socket answers (only this HAProxy makes it: a port that accepts could be
        someone else's) and it is still running (it exits when it cannot bind)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        reply = await self._ask("show info")
        return "Pid:" in reply and self.proc.returncode is None

    async def _ask(self, command: str) -> str:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            return ""
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")
        except (OSError, TimeoutError):
            return ""
        finally:
            writer.close()

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.folder / "haproxy.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def servers(self) -> list[ServerState]:
        """Each server as HAProxy sees it now (from its stats socket)."""
        if self.proc is None or self.proc.returncode is not None:
            return []
        return parse_stat(await self._ask("show stat"))

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it overstays; only our own process."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
