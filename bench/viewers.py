"""Processes of their own for ``bench/scale.py``'s many-viewers section.

``writer``: paced SETs against one Redis for a bounded time. Every ``1/lock_every``-th
write is a lock change, ``bench:lock:<n % locks>`` set to ``f"{time.time_ns():032x}"``
with ``PX 60000`` (32 hex digits, so coordscope recognises a lock, and the token is the
write time); the rest are cache keys ``bench:cache:<m % cache_keys>``. Writes a JSON file
with every lock write ``[index, token_ns]``.

``viewers``: N websocket viewers of ``/ws?batch=1`` in one asyncio process (the
``websockets`` client, which offers permessage-deflate as a browser does). Every
``lock.upserted`` with a token the viewer has not seen yet gives a latency (receive
time - token) and raises the viewer's highest token seen for that lock; an upsert of
a token already seen (a rescan re-reading the lock unchanged) is counted as a repeat,
without a latency; a lock in a snapshot counts as seen (for coverage) but gives no
latency. All viewers get the same bytes for a flush, so each distinct
message is parsed once and the result shared. Prints ``ready`` when every viewer has
its first snapshot, stops on a ``stop`` line on stdin (or after ``--max-seconds``) and
writes a JSON file of what it saw.

    python bench/viewers.py writer --port P --seconds 60 --out writes.json
    python bench/viewers.py viewers --url ws://127.0.0.1:W/ws?batch=1 --count 10 --out seen.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from array import array
from collections import OrderedDict
from typing import Any

LOCK_PREFIX = "bench:lock:"
HEX32 = re.compile(r"[0-9a-f]{32}")
DROPPED = "read nothing for"


# --------------------------------------------------------------------------- writer


def writer(
    port: int, seconds: float, rate: int, lock_every: int, locks: int, cache_keys: int, out: str
) -> None:
    import redis

    client = redis.Redis(port=port)
    ticks_per_s = 100
    per_tick = max(1, rate // ticks_per_s)
    ticks = int(seconds * ticks_per_s)
    writes: list[tuple[int, int]] = []
    sets = 0
    n = m = 0
    worst_behind = 0.0
    start = time.monotonic()
    hard_stop = start + seconds + 10
    for k in range(ticks):
        due = start + k / ticks_per_s
        now = time.monotonic()
        if now > hard_stop:
            break
        if due > now:
            time.sleep(due - now)
        else:
            worst_behind = max(worst_behind, now - due)
        pipe = client.pipeline(transaction=False)
        for j in range(per_tick):
            if j % lock_every == 0:
                token_ns = time.time_ns()
                pipe.set(f"{LOCK_PREFIX}{n % locks}", f"{token_ns:032x}", px=60000)
                writes.append((n % locks, token_ns))
                n += 1
            else:
                pipe.set(f"bench:cache:{m % cache_keys}", b"v" * 100)
                m += 1
        pipe.execute()
        sets += per_tick
    elapsed = time.monotonic() - start
    client.close()
    with open(out, "w") as f:
        json.dump(
            {"writes": writes, "sets": sets, "elapsed_s": elapsed, "worst_behind_ms": worst_behind * 1000}, f
        )


# --------------------------------------------------------------------------- viewers


class Parsed:
    __slots__ = ("drops", "locks", "snapshot")

    def __init__(self, snapshot: bool, locks: list[tuple[str, int]], drops: list[str]) -> None:
        self.snapshot = snapshot
        self.locks = locks
        self.drops = drops


def _lock_of(body: dict[str, Any]) -> tuple[str, int] | None:
    name = body.get("key") or body.get("name") or ""
    token = body.get("token") or ""
    if not name.startswith(LOCK_PREFIX) or not HEX32.fullmatch(token):
        return None
    return name, int(token, 16)


def parse(raw: bytes) -> Parsed:
    data = json.loads(raw)
    kind = data.get("type")
    locks: list[tuple[str, int]] = []
    drops: list[str] = []
    if kind == "snapshot":
        for body in data.get("locks", ()):
            got = _lock_of(body)
            if got:
                locks.append(got)
        return Parsed(True, locks, drops)
    events = data.get("events", ()) if kind == "batch" else [data]
    for event in events:
        etype = event.get("type")
        if etype == "lock.upserted":
            got = _lock_of(event.get("lock", {}))
            if got:
                locks.append(got)
        elif etype == "log" and DROPPED in event.get("text", ""):
            drops.append(event["text"])
    return Parsed(False, locks, drops)


class Seen:
    def __init__(self) -> None:
        self.latencies_ms = array("d")
        self.highest: dict[str, int] = {}
        self.messages = 0
        self.bytes = 0
        self.snapshots = 0
        self.events = 0
        self.repeats = 0
        self.closed: str | None = None


class Viewers:
    def __init__(self) -> None:
        self.cache: OrderedDict[bytes, Parsed] = OrderedDict()
        self.drops: list[tuple[float, str]] = []
        self.worst_by_second: dict[int, float] = {}
        """Unix second -> the worst latency received in it (by any viewer)."""
        self._drop_texts: set[str] = set()

    def parsed(self, raw: bytes) -> Parsed:
        hit = self.cache.get(raw)
        if hit is None:
            hit = parse(raw)
            self.cache[raw] = hit
            if len(self.cache) > 256:
                self.cache.popitem(last=False)
            for text in hit.drops:
                if text not in self._drop_texts:
                    self._drop_texts.add(text)
                    self.drops.append((time.time(), text))
        return hit

    def take(self, seen: Seen, raw: bytes, at_ns: int) -> None:
        seen.messages += 1
        seen.bytes += len(raw)
        got = self.parsed(raw)
        if got.snapshot:
            seen.snapshots += 1
        highest = seen.highest
        for name, token_ns in got.locks:
            if token_ns <= highest.get(name, 0):
                # the same token again (a rescan re-read the lock unchanged): no new write
                seen.repeats += 0 if got.snapshot else 1
                continue
            highest[name] = token_ns
            if not got.snapshot:
                seen.events += 1
                latency = (at_ns - token_ns) / 1e6
                seen.latencies_ms.append(latency)
                second = at_ns // 1_000_000_000
                if latency > self.worst_by_second.get(second, 0.0):
                    self.worst_by_second[second] = latency


async def _viewer(connection: Any, seen: Seen, viewers: Viewers) -> None:
    try:
        while True:
            raw = await connection.recv(decode=False)
            viewers.take(seen, raw, time.time_ns())
    except Exception as exc:  # closed by the server, or by us at the end
        seen.closed = f"{type(exc).__name__}: {exc}"[:200]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * q / 100))]


async def run_viewers(url: str, count: int, out: str, max_seconds: float, deflate: bool = True) -> None:
    from websockets.asyncio.client import connect

    viewers = Viewers()
    seen = [Seen() for _ in range(count)]
    started_cpu, started = time.process_time(), time.monotonic()
    connections = []
    try:
        async with asyncio.timeout(60):
            for _ in range(count):
                connections.append(
                    await connect(
                        url, max_size=None, open_timeout=20, compression="deflate" if deflate else None
                    )
                )
            for connection, s in zip(connections, seen, strict=True):
                viewers.take(s, await connection.recv(decode=False), time.time_ns())
        print("ready", flush=True)
        tasks = [asyncio.create_task(_viewer(c, s, viewers)) for c, s in zip(connections, seen, strict=True)]
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                while True:
                    line = await loop.run_in_executor(None, sys.stdin.readline)
                    if not line or line.strip() == "stop":
                        break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for connection in connections:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await connection.close()
    wall = time.monotonic() - started
    cpu = time.process_time() - started_cpu
    every = sorted(x for s in seen for x in s.latencies_ms)
    result = {
        "count": count,
        "wall_s": wall,
        "cpu_pct": 100 * cpu / wall if wall else 0.0,
        "p50_ms": _percentile(every, 50),
        "p99_ms": _percentile(every, 99),
        "max_ms": every[-1] if every else 0.0,
        "samples": len(every),
        "drops": viewers.drops,
        "worst_by_second": sorted(viewers.worst_by_second.items()),
        "viewers": [
            {
                "messages": s.messages,
                "bytes": s.bytes,
                "snapshots": s.snapshots,
                "events": s.events,
                "repeats": s.repeats,
                "p99_ms": _percentile(sorted(s.latencies_ms), 99),
                "highest": s.highest,
                "closed": s.closed,
            }
            for s in seen
        ],
    }
    _dump(out, result)


def _dump(out: str, result: dict[str, Any]) -> None:
    with open(out, "w") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--seconds", type=float, default=60)
    w.add_argument("--rate", type=int, default=2000, help="SETs per second")
    w.add_argument("--lock-every", type=int, default=5, help="one write in this many is a lock")
    w.add_argument("--locks", type=int, default=2000)
    w.add_argument("--cache-keys", type=int, default=10000)
    w.add_argument("--out", required=True)
    v = sub.add_parser("viewers")
    v.add_argument("--url", required=True)
    v.add_argument("--count", type=int, default=10)
    v.add_argument("--max-seconds", type=float, default=120)
    v.add_argument("--out", required=True)
    v.add_argument(
        "--compression", choices=("deflate", "none"), default="deflate", help="offer permessage-deflate"
    )
    args = parser.parse_args()
    if args.command == "writer":
        writer(args.port, args.seconds, args.rate, args.lock_every, args.locks, args.cache_keys, args.out)
    else:
        asyncio.run(
            run_viewers(args.url, args.count, args.out, args.max_seconds, args.compression == "deflate")
        )


if __name__ == "__main__":
    main()
