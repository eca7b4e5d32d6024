"""Keyspace pipeline benchmark: coordscope's Redis collector against a raw ceiling.

Starts its own redis-server (notifications ``KEA``) on a free loopback port and
measures, in one run:

1. throughput: ``redis-benchmark`` writes N SETs over K keys (pipelined);
   - ceiling: a bare redis-py asyncio pub/sub ``listen()`` (hiredis, RESP2)
     counting the keyspace notifications;
   - coordscope: the collector + state + bus, counting notifications taken
     in, and the time until the state holds the last value of every key;
2. latency: one SET at a time, SET -> notification (raw) and
   SET -> event delivered to a viewer (coordscope), p50/p99.

Prints each figure and the ratio coordscope / raw. Every loop is bounded in
count and time; the server is stopped by its PID at the end.

    .venv/bin/python -m bench.keyspace [--sets 200000] [--keys 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.asyncio import Redis

from app.bus import Bus
from app.cluster import free_port
from bench.lab import interrupted
from collectors.events import Upserted
from collectors.observatory import Observatory
from collectors.targets import RedisTarget
from scenarios.kit.rounds import percentile

CHANNEL = "__keyspace@0__:*"


def start_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--notify-keyspace-events",
            "KEA",
            "--dir",
            str(folder),
            "--client-output-buffer-limit",
            "pubsub 512mb 256mb 60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def load(port: int, sets: int, keys: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "redis-benchmark",
            "-p",
            str(port),
            "-t",
            "set",
            "-n",
            str(sets),
            "-r",
            str(keys),
            "-P",
            "32",
            "-c",
            "4",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def raw_throughput(port: int, sets: int, keys: int) -> float:
    sub = Redis(port=port, protocol=2)
    pubsub = sub.pubsub()
    await pubsub.psubscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # the confirmation
    writer = load(port, sets, keys)
    start = time.perf_counter()
    count = 0
    async with asyncio.timeout(120):
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                count += 1
                if count == sets:
                    break
    took = time.perf_counter() - start
    writer.wait(30)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await sub.aclose()
    return sets / took


async def coordscope_throughput(port: int, sets: int, keys: int) -> tuple[float, float, int]:
    """(notifications/s taken in, ms from the last write until the state is current, coalesced)."""
    observatory = Observatory([RedisTarget(id="bench", host="127.0.0.1", port=port)], [])
    bus = Bus(observatory)
    viewer = bus.subscribe()
    await observatory.start()
    await observatory.wait_synced(10)
    collector = observatory.redis[0]
    node_events = collector.events
    writer = load(port, sets, keys)
    start = time.perf_counter()
    async with asyncio.timeout(120):
        while collector.events - node_events < sets:
            await viewer.get()
    took = time.perf_counter() - start
    writer.wait(30)
    last_write = time.perf_counter()
    # converged: the collector has read back every key it was told about
    await bus.wait_for(lambda _: collector.backlog == 0, timeout=60)
    converged_ms = (time.perf_counter() - last_write) * 1000
    coalesced = collector.coalesced
    viewer.close()
    await observatory.stop()
    return sets / took, converged_ms, coalesced


async def raw_latency(port: int, samples: int) -> list[float]:
    sub = Redis(port=port, protocol=2)
    pubsub = sub.pubsub()
    await pubsub.psubscribe("__keyspace@0__:lat:*")
    await pubsub.get_message(timeout=1)
    writer = Redis(port=port)
    out = []
    for i in range(samples):
        t0 = time.perf_counter()
        await writer.set(f"lat:{i}", "x")
        while True:
            message = await pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage":
                break
        out.append((time.perf_counter() - t0) * 1e6)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await sub.aclose()
    await writer.aclose()
    return out


async def coordscope_latency(port: int, samples: int) -> list[float]:
    observatory = Observatory([RedisTarget(id="bench", host="127.0.0.1", port=port)], [])
    bus = Bus(observatory, interval_s=0.0)
    await observatory.start()
    await observatory.wait_synced(10)
    viewer = bus.subscribe()
    await viewer.get()  # snapshot
    writer = Redis(port=port)
    out = []
    for i in range(samples):
        key = f"lat2:{i}:lock"
        t0 = time.perf_counter()
        await writer.set(key, "0" * 32, px=60000)
        async with asyncio.timeout(5):
            while True:
                delivery = await viewer.get()
                if isinstance(delivery, list) and any(
                    isinstance(e, Upserted) and e.entity.id == f"redis:{key}" for e in delivery
                ):
                    break
        out.append((time.perf_counter() - t0) * 1e6)
    await writer.aclose()
    viewer.close()
    await observatory.stop()
    return out


async def main(sets: int, keys: int, samples: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = start_server(port, Path(folder))
        try:
            flush = redis.Redis(port=port)
            raw = await raw_throughput(port, sets, keys)
            flush.flushall()
            ours, converged, coalesced = await coordscope_throughput(port, sets, keys)
            flush.flushall()
            raw_lat = await raw_latency(port, samples)
            our_lat = await coordscope_latency(port, samples)
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
    print(f"keyspace throughput: {sets} SETs over {keys} keys (redis-benchmark -P 32 -c 4)")
    print(f"  raw redis-py pub/sub listen() (hiredis, RESP2): {raw:>10,.0f} events/s")
    print(
        f"  coordscope collector + state + bus:            {ours:>10,.0f} events/s  ratio {ours / raw:.2f}x"
    )
    print(
        f"  coalesced {coalesced:,} of {sets:,} notifications "
        f"({100 * coalesced / sets:.0f}%); state current {converged:.0f} ms after the last write"
    )
    print(f"latency, one SET at a time ({samples} samples):")
    raw50, raw99 = percentile(raw_lat, 50), percentile(raw_lat, 99)
    our50, our99 = percentile(our_lat, 50), percentile(our_lat, 99)
    print(f"  raw SET -> notification:          p50 {raw50:6.0f} us  p99 {raw99:6.0f} us")
    print(
        f"  coordscope SET -> viewer event:   p50 {our50:6.0f} us  p99 {our99:6.0f} us  "
        f"ratio p50 {our50 / raw50:.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)  # its server is stopped then too
    try:
        asyncio.run(main(args.sets, args.keys, args.samples))
    except KeyboardInterrupt:
        sys.exit("interrupted: its servers are stopped")
