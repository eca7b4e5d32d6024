"""A run's janitor: the process that cleans up after a run whose process died.

Every run starts one (``python -m scenarios.kit.janitor``). It watches the
run's hash: when the run ends normally (its status is no longer
``running``), the run cleaned up itself and the janitor just exits; when the
run's heartbeat stops for :data:`SILENT_MS` (``kill -9`` of ``coordscope
run``, a crash), it does what the run would have done at its end:

- SIGKILL the run's services that are still there (each registered its pid;
  a pid is only signalled when ``/proc/<pid>/cmdline`` still names this run,
  so a recycled pid is never touched);
- delete the keys, znodes and PostgreSQL schemas of the run's cleanup plan
  (kept in the run's hash as the run created them);
- mark the run ``abandoned``, saying why, so every viewer knows.

It exits when its work is done, when the control node has been unreachable
for a minute, or after a day at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.records import display
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.cleanup import CleanupPlan, carry_out
from scenarios.kit.clients import redis_client

SILENT_MS = 4000
POLL_S = 0.5
MAX_LIFE_S = 24 * 3600


async def watch(run_id: str, control: Redis) -> str:
    """Wait until the run ends (returns ""), or dies (returns why)."""
    key = coordscope.run_key(run_id)
    started = time.monotonic()
    unreachable_since: float | None = None
    while time.monotonic() - started < MAX_LIFE_S:
        try:
            status, alive = await control.hmget(key, ["status", "alive_ms"])
            unreachable_since = None
        except Exception:
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > 60:
                return ""
            await asyncio.sleep(POLL_S)
            continue
        if status is None or status != b"running":
            return ""
        if alive is not None and alive.isdigit() and now_ms() - int(alive) > SILENT_MS:
            return f"its process stopped: no heartbeat for over {SILENT_MS // 1000} s"
        await asyncio.sleep(POLL_S)
    return ""


async def clean(run_id: str, control: Redis, why: str) -> None:
    raw: Any = await control.hget(coordscope.run_key(run_id), "cleanup")
    plan = CleanupPlan.from_json(bytes(raw).decode() if raw else "")
    killed = await _kill_services(run_id, control)
    await carry_out(plan)
    note = f"the run's process died ({why}); its janitor cleaned up" + (
        f" and stopped {', '.join(killed)}" if killed else ""
    )
    await control.hset(
        coordscope.run_key(run_id),
        mapping={"status": "abandoned", "ended_ms": str(now_ms()), "error": note},
    )


async def _kill_services(run_id: str, control: Redis) -> list[str]:
    killed = []
    pattern = coordscope.service_key(run_id, "*")
    async for key in control.scan_iter(match=pattern, count=100):
        replies: Any = await control.hmget(key, ["name", "pid"])
        name, pid = (display(v) if isinstance(v, bytes) else "" for v in replies)
        if pid.isdigit() and _ours(int(pid), run_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
            killed.append(name or "?")
        await control.delete(key)
    return killed


def _ours(pid: int, run_id: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return run_id.encode() in argv


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="clean up after a coordscope run whose process died")
    p.add_argument("--run", required=True)
    p.add_argument("--control", required=True)
    args = p.parse_args(argv)
    control = redis_client(RedisTarget.from_url(args.control))
    try:
        why = await watch(args.run, control)
        if why:
            await clean(args.run, control, why)
            print(f"janitor: run {args.run} died ({why}); cleaned up", file=sys.stderr)
    finally:
        await control.aclose()
    return 0


if __name__ == "__main__":
    # its own session: a ^C meant for the run does not reach it, and it outlives a kill -9
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(asyncio.run(main()))
