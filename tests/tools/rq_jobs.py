"""Job functions a real RQ worker runs in the queue tests (imported by the worker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rq import get_current_job

ROOT = Path(__file__).resolve().parents[2]


def worker(port: int, queue: str) -> subprocess.Popen[bytes]:
    """A real ``rq worker --burst`` process on ``queue`` (it runs these functions); the
    caller waits for it or kills it by its PID."""
    argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", "rq.worker.SimpleWorker"]
    return subprocess.Popen(
        [*argv, "-u", f"redis://127.0.0.1:{port}", queue],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def double(x: int) -> int:
    return x * 2


def fail() -> None:
    raise ValueError("this job fails on purpose")


def wait_for(signal: str) -> str:
    """Stay ``started`` until the test pushes to ``signal`` (at most 30 s)."""
    job = get_current_job()
    assert job is not None
    job.connection.blpop([signal], 30)
    return "released"
