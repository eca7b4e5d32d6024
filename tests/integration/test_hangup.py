"""A terminal that goes away under `coordscope demo`: the process ends and stops the cluster
it started (Textual alone would block on the dead terminal and spin at 100% CPU)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from app.cluster import LocalCluster, free_port
from tests.conftest import wait_until
from tests.integration.test_idempotency import running


def test_demo_ends_and_stops_its_cluster_when_its_terminal_closes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--state", str(state), "--port", str(free_port())],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # its own terminal, as a terminal window gives it
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        cwd=Path(__file__).parent,
    )
    os.close(slave)
    shown = bytearray()

    def read() -> None:  # the terminal shows what it is sent (a pty nobody reads fills up)
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                shown.extend(chunk[-4096:])

    threading.Thread(target=read, daemon=True).start()
    cluster = LocalCluster(state)
    pids: list[int] = []
    try:
        wait_until(lambda: cluster.load() is not None or proc.poll() is not None, 90, "the demo's cluster up")
        assert proc.poll() is None, bytes(shown[-500:])
        info = cluster.load()
        assert info is not None
        pids = [m.pid for m in info.members if m.pid]
        wait_until(lambda: all(running(p) for p in pids), 30, "every member running")
        os.close(master)  # the terminal window closes
        master = -1
        proc.wait(timeout=30)
        wait_until(lambda: not any(running(p) for p in pids), 30, "the demo's cluster stopped")
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cluster.down()
