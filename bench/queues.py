"""What re-reading stream groups costs: Redis commands a second and CPU, per stream.

``XREADGROUP``/``XACK`` send no keyspace notification, so the Redis collector
re-reads the groups of every stream that has some every
``REFRESH_EVERY_S`` (at most ``REFRESH_BATCH`` streams a cycle). This starts
its own redis-server on a free loopback port, makes N streams with one group,
two consumers and a pending entry each, watches them for ``--seconds`` with
nothing else happening, and prints per N: the group commands Redis served a
second (``INFO commandstats``), the server-side µs one refresh of all N streams
costs (the same counters' ``usec``), our process's CPU and the server's CPU,
each beside the same with no streams at all (the baseline: the idle collector).
``bench/ordering.py`` reports the same figures for its worker queues, through
:func:`measure`.

    .venv/bin/python -m bench.queues --streams 0,10,100,1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

import redis

from app.cluster import free_port
from bench.keyspace import start_server
from bench.lab import interrupted
from collectors.observatory import Observatory
from collectors.redis_streams import REFRESH_BATCH, REFRESH_EVERY_S
from collectors.targets import RedisTarget

GROUP_COMMANDS = ("cmdstat_xinfo|groups", "cmdstat_xinfo|consumers", "cmdstat_xpending")
GROUPS_READ = "cmdstat_xinfo|groups"
"""Sent once per stream in every refresh: counts the refreshes."""


def _group_stats(client: redis.Redis) -> tuple[int, int, int]:
    """(calls, server µs) of the group commands so far, and the ``XINFO GROUPS`` calls among them."""
    stats = client.info("commandstats")
    found = [stats[name] for name in GROUP_COMMANDS if name in stats]
    groups = int(stats[GROUPS_READ]["calls"]) if GROUPS_READ in stats else 0
    return sum(int(s["calls"]) for s in found), sum(int(s["usec"]) for s in found), groups


def _server_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def make_streams(client: redis.Redis, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        key = f"bench:orders:{i}"
        pipe.xgroup_create(key, "billing", id="0", mkstream=True)
        pipe.xadd(key, {"order": str(i)})
        pipe.xreadgroup("billing", "worker-a", {key: ">"}, count=1)
        pipe.xgroup_createconsumer(key, "billing", "worker-b")
    pipe.execute()


async def measure(port: int, n: int, seconds: float) -> dict[str, float]:
    """Watch ``n`` streams with groups on the server at ``port`` (emptied first: FLUSHALL)
    for ``seconds``. ``server_us_per_refresh`` is NaN without streams (nothing refreshed)."""
    client = redis.Redis(port=port)
    client.flushall()
    make_streams(client, n)
    observatory = Observatory([RedisTarget(id="bench", host="127.0.0.1", port=port)], [])
    await observatory.start()
    try:
        await observatory.wait_synced(30)
        await asyncio.sleep(2 * REFRESH_EVERY_S)  # past the first reads
        (calls, usec, reads), server = _group_stats(client), _server_cpu(client)
        ours, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        took = time.monotonic() - t0
        calls1, usec1, reads1 = _group_stats(client)
        refreshes = (reads1 - reads) / n if n else 0.0
        return {
            "streams": n,
            "group_cmds_per_s": (calls1 - calls) / took,
            "refreshes_per_s": refreshes / took,
            "server_us_per_refresh": (usec1 - usec) / refreshes if refreshes else float("nan"),
            "our_cpu_pct": 100 * (time.process_time() - ours) / took,
            "server_cpu_pct": 100 * (_server_cpu(client) - server) / took,
        }
    finally:
        await observatory.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="0,10,100,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)  # its server is stopped then too
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = start_server(port, Path(folder))
        try:
            rows = [asyncio.run(measure(port, int(n), args.seconds)) for n in args.streams.split(",")]
        finally:
            server.terminate()
            server.wait(10)
    base = rows[0]
    print(f"refresh every {REFRESH_EVERY_S:g}s, at most {REFRESH_BATCH} streams a cycle")
    print(
        f"{'streams':>8} {'group cmds/s':>13} {'µs/refresh':>11} {'our CPU %':>10} {'server CPU %':>13} "
        f"{'ours/stream':>12}"
    )
    for row in rows:
        n = int(row["streams"])
        per = (row["our_cpu_pct"] - base["our_cpu_pct"]) / n if n and base["streams"] == 0 else float("nan")
        print(
            f"{n:>8} {row['group_cmds_per_s']:>13.0f} {row['server_us_per_refresh']:>11.1f} "
            f"{row['our_cpu_pct']:>10.2f} "
            f"{row['server_cpu_pct']:>13.2f} {per:>11.4f}%"
        )


if __name__ == "__main__":
    main()
