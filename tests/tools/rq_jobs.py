"""Job functions a real RQ worker runs in the queue tests (imported by the worker)."""

from __future__ import annotations

from rq import get_current_job


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
