"""coordscope at production scale: each figure beside its baseline and its goal.

Starts its own redis-servers on free loopback ports and ``coordscope web`` as a
separate OS process watching one of them (``--redis redis://127.0.0.1:PORT``, a
state folder of its own, no local cluster), and measures:

1. a million keys (``--keys``):
   a. written before the viewer starts (``DEBUG POPULATE`` under three prefixes
      plus 1,000 locks): the web process's RSS (peak, final), ``GET /api/state``
      and the first websocket message (size, time) during and after the scan,
      how long the scan took, when all the locks were listed;
   b. written while watching (``redis-benchmark -t set -r 100000000 -P 32 -c 4``):
      our subscriber's output buffer on the server (``CLIENT LIST TYPE pubsub``,
      omem; Redis's default pub/sub limit is 32 MiB), the web RSS, gaps or a
      paused feed, the time until the node's key counts match ``DBSIZE``; the
      baseline is redis-benchmark's raw write rate;
2. many viewers (``--viewers 10,100``, ``--seconds``): a paced writer (2,000
   SET/s, 400 of them lock changes whose token is the write time) and the
   viewers in processes of their own (``bench/viewers.py``): store -> viewer
   latency p50/p99, the lock writes each viewer covered, the web process's CPU
   and RSS, and whether a viewer that never reads is dropped; the baseline is
   SET -> keyspace notification to a bare redis-py subscriber under the same load;
3. keyspace ingest: ``bench/keyspace.py``'s figures, ours / raw;
4. ZooKeeper: ``bench/zk_watch.py``'s ``measure(hosts, changes)`` against a local
   cluster, when that module is there.

Ends with every figure against its goal (PASS/MISS). Every loop is bounded in
count and time; every process started here is stopped by its PID.

    .venv/bin/python -m bench.scale            # full size (about 4 minutes on 2 cores)
    .venv/bin/python -m bench.scale --quick    # 100k keys, 30 s per viewer count (under 3 minutes)
    .venv/bin/python -m bench.scale --only 2 --viewers 10 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from websockets.sync.client import connect as ws_connect

from app.cluster import free_port
from bench.lab import interrupted
from scenarios.kit.rounds import percentile

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
OMEM = re.compile(r"\bomem=(\d+)")
NAME = re.compile(r"\bname=(\S*)")
SCANNED = re.compile(r"scanned ([\d,]+) keys in ([\d.]+)s")
PERCENT = re.compile(r"scan (\d+)%")

STARTED: list[subprocess.Popen[Any]] = []
"""Every process this bench started, stopped by PID at the end whatever happens."""


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    section: str
    name: str
    value: str
    goal: str = ""
    ok: bool | None = None


FIGURES: list[Figure] = []


def figure(section: str, name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
    FIGURES.append(Figure(section, name, value, goal, ok))


def say(text: str = "") -> None:
    print(text, flush=True)


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def kb(n: float) -> str:
    return f"{n / 1000:,.0f} kB" if n < 1_000_000 else f"{n / 1e6:.2f} MB"


# --------------------------------------------------------------------------- processes


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in STARTED:
        STARTED.remove(proc)


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(argv, **kwargs)
    STARTED.append(proc)
    return proc


def start_redis(folder: Path, debug: bool = False) -> tuple[int, subprocess.Popen[Any]]:
    """A redis-server with keyspace notifications on, no persistence, Redis's default
    client output buffer limits (pub/sub: 32 MiB hard, 8 MiB for 60 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--notify-keyspace-events", "KEA", "--dir", str(folder)]
    if debug:
        argv += ["--enable-debug-command", "local"]
    proc = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return port, proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.02)


class Watch:
    """RSS and CPU of one process, sampled every ``every`` seconds by a thread."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int, int]] = []
        """(monotonic time, RSS bytes, CPU ticks)"""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> tuple[float, int, int] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        rss = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")), 0
        )
        fields = stat[stat.rindex(")") + 2 :].split()
        return time.monotonic(), rss, int(fields[11]) + int(fields[12])

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sample = self.read()
            if sample is None:
                return
            self.samples.append(sample)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def peak(self, since: float = 0.0) -> int:
        return max((s[1] for s in self.samples if s[0] >= since), default=0)

    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def rss_at(self, t: float) -> int:
        return min(self.samples, key=lambda s: abs(s[0] - t))[1] if self.samples else 0

    def cpu(self, start: float, end: float) -> float:
        """CPU% of one core between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0
        first, last = inside[0], inside[-1]
        return 100 * (last[2] - first[2]) / CLK_TCK / max(1e-9, last[0] - first[0])


class Web:
    """``coordscope web`` watching one Redis, as a process of its own."""

    def __init__(self, redis_port: int, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = open(folder / "web.out", "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = spawn(
            [
                str(BIN / "coordscope"),
                *("web", "--redis", f"redis://127.0.0.1:{redis_port}"),
                *("--port", str(self.port), "--state", str(folder)),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("COORDSCOPE_")},
        )
        self.watch = Watch(self.proc.pid)
        self.folder = folder

    def wait_ready(self, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordscope web exited: {(self.folder / 'web.out').read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = get(self.port, "/api/state?kind=node", timeout=5)
                if status == 200:
                    return time.monotonic() - self.started
            time.sleep(0.05)
        raise RuntimeError("coordscope web did not answer in time")

    def node(self) -> dict[str, Any]:
        """The one node, the totals and the log, from ``/api/state?kind=node``."""
        _, body, _ = get(self.port, "/api/state?kind=node")
        data = json.loads(body)
        return {"node": (data.get("nodes") or [{}])[0], "totals": data["totals"], "log": data["log"]}

    def wait_scanned(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.node()
            if state["node"].get("scan", "").startswith("scanned") or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def stop(self) -> None:
        self.watch.close()
        stop(self.proc)
        self.log.close()


def get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes, float]:
    """(status, body, ms from the request to the last byte of the body)"""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, body, (time.perf_counter() - t0) * 1000


def first_ws_message(port: int) -> tuple[int, float]:
    """(bytes, ms from the start of the connect to the whole first message)"""
    t0 = time.perf_counter()
    with ws_connect(f"ws://127.0.0.1:{port}/ws?batch=1", max_size=None, open_timeout=10) as ws:
        message = ws.recv(timeout=30, decode=False)
        took = (time.perf_counter() - t0) * 1000
    return len(message), took


def omem(client: redis.Redis) -> int:
    """Our subscriber's output buffer on the server (the largest, if there were several)."""
    reply = client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    best = 0
    for line in text.splitlines():
        name, mem = NAME.search(line), OMEM.search(line)
        if mem and (name is None or name.group(1) in ("coordscope-watch", "")):
            best = max(best, int(mem.group(1)))
    return best


# --------------------------------------------------------------------------- 1a


def written_before(args: argparse.Namespace, folder: Path) -> None:
    section = "1a keys before"
    n = args.keys
    say(f"== 1a. {n:,} keys written before the viewer starts ==")
    port, server = start_redis(folder / "redis-1a", debug=True)
    client = redis.Redis(port=port)
    web: Web | None = None
    try:
        t0 = time.perf_counter()
        for share, prefix in ((0.6, "cache:user"), (0.3, "cache:item"), (0.1, "feed")):
            client.execute_command("DEBUG", "POPULATE", int(n * share), prefix, 64)  # type: ignore[no-untyped-call]
        pipe = client.pipeline(transaction=False)
        for i in range(args.locks):
            pipe.set(f"jobs:{i}:lock", secrets.token_hex(16), px=600_000)
        pipe.execute()
        dbsize = int(client.dbsize())
        say(f"  filled: {dbsize:,} keys ({args.locks:,} locks) in {time.perf_counter() - t0:.1f}s")

        web = Web(port, folder / "web-1a")
        ready = web.wait_ready()
        say(f"  web process pid {web.proc.pid} answers after {ready:.1f}s")
        states: list[tuple[str, int, float]] = []
        firsts: list[tuple[str, int, float]] = []

        def measure(when: str) -> None:
            _, body, ms = get(web.port, "/api/state")
            states.append((when, len(body), ms))
            locks_now = json.loads(body)["totals"].get("locks", 0)
            size, wms = first_ws_message(web.port)
            firsts.append((when, size, wms))
            say(
                f"  [{when:>14}] GET /api/state {kb(len(body)):>9} in {ms:6.0f} ms;"
                f" first ws message {kb(size):>9} in {wms:6.0f} ms; locks listed {locks_now:,}"
            )

        scan_end: float | None = None
        locks_at: float | None = None
        progress = ""
        measured_half = False
        measure("scan starting")
        deadline = time.monotonic() + args.scan_timeout
        while time.monotonic() < deadline:
            state = web.node()
            now = time.monotonic()
            progress = state["node"].get("scan", "")
            if locks_at is None and state["totals"].get("locks", 0) >= args.locks:
                locks_at = now
            if scan_end is None and progress.startswith("scanned"):
                scan_end = now
            match = PERCENT.search(progress)
            if not measured_half and match and int(match.group(1)) >= 50:
                measured_half = True
                measure(f"scan {match.group(1)}%")
            if scan_end is not None and (locks_at is not None or now > scan_end + 30):
                break
            time.sleep(0.25)
        if scan_end is None:
            say(f"  the scan did not end within {args.scan_timeout:.0f}s: {progress!r}")
        for i in range(3):
            measure(f"after scan #{i + 1}")
            time.sleep(0.5)
        _, body, _ = get(web.port, "/api/state?kind=lock&limit=5000")
        listed = sum(1 for lock in json.loads(body)["locks"] if str(lock.get("key", "")).startswith("jobs:"))
        time.sleep(2)
        node = web.node()["node"]
        peak, final = web.watch.peak(), web.watch.last()
        scan_s = (scan_end - web.started) if scan_end else float("nan")
        match = SCANNED.search(node.get("scan", ""))
        own_s = float(match.group(2)) if match else float("nan")
        listed_keys, summarised = node.get("keys", 0), node.get("summarised", 0)
        say(f"  node: {listed_keys:,} listed + {summarised:,} summarised; {node.get('scan')}")
        say(f"  scan ended {scan_s:.1f}s after the web process started (the node says {own_s:.1f}s)")
        rel = f"{locks_at - scan_end:+.1f}s" if locks_at and scan_end else "never"
        say(f"  all {args.locks:,} locks in totals: {rel} relative to the scan's end; {listed:,} listed")
        say(f"  web RSS: peak {mib(peak)}, final {mib(final)} (goal <= 150 MiB)")
        worst_state = max(states, key=lambda s: s[2])
        biggest_state = max(states, key=lambda s: s[1])
        worst_ws = max(firsts, key=lambda s: s[2])
        biggest_ws = max(firsts, key=lambda s: s[1])
        figure(section, "web RSS peak", mib(peak), "<= 150 MiB", peak <= 150 * MIB)
        figure(section, "web RSS final", mib(final), "<= 150 MiB", final <= 150 * MIB)
        figure(section, "GET /api/state size (max)", kb(biggest_state[1]), "<= 1 MB", biggest_state[1] <= 1e6)
        figure(
            section,
            f"GET /api/state time (max, {worst_state[0]})",
            f"{worst_state[2]:.0f} ms",
            "<= 200 ms",
            worst_state[2] <= 200,
        )
        figure(section, "first ws message size (max)", kb(biggest_ws[1]), "<= 1 MB", biggest_ws[1] <= 1e6)
        figure(
            section,
            f"first ws message time (max, {worst_ws[0]})",
            f"{worst_ws[2]:.0f} ms",
            "<= 200 ms",
            worst_ws[2] <= 200,
        )
        figure(
            section, "scan of every key", f"{scan_s:.1f} s ({dbsize / own_s:,.0f} keys/s)" if match else "—"
        )
        figure(
            section,
            "all locks listed (vs scan end)",
            f"{listed:,}/{args.locks:,}, {rel}",
            f"all {args.locks:,}",
            listed == args.locks,
        )
    finally:
        if web is not None:
            web.stop()
        client.close()
        stop(server)


# --------------------------------------------------------------------------- 1b


def written_while_watching(args: argparse.Namespace, folder: Path) -> None:
    section = "1b keys while watching"
    n = args.writes or args.keys
    say(f"== 1b. {n:,} SETs written while watching (redis-benchmark -P 32 -c 4) ==")
    port, server = start_redis(folder / "redis-1b")
    client = redis.Redis(port=port)
    web: Web | None = None
    try:
        web = Web(port, folder / "web-1b")
        web.wait_ready()
        web.wait_scanned(10)
        before_rss = web.watch.last()
        omems: list[int] = []
        feeds: set[str] = set()
        buffers: list[int] = []
        bench = spawn(
            [
                *("redis-benchmark", "-p", str(port), "-t", "set", "-n", str(n)),
                *("-r", "100000000", "-P", "32", "-c", "4", "-q"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        last_node = 0.0
        deadline = t0 + max(60.0, n / 10_000)
        while bench.poll() is None and time.monotonic() < deadline:
            omems.append(omem(client))
            if time.monotonic() - last_node > 0.5:
                last_node = time.monotonic()
                node = web.node()["node"]
                feeds.add(node.get("feed", ""))
                buffers.append(node.get("sub_buffer") or 0)
            time.sleep(0.02)
        write_end = time.monotonic()
        if bench.poll() is None:
            say("  redis-benchmark did not finish in time: stopped")
        stop(bench)
        write_s = write_end - t0
        rate = n / write_s
        dbsize = int(client.dbsize())
        say(f"  redis-benchmark: {n:,} SETs in {write_s:.1f}s = {rate:,.0f} SET/s (raw); {dbsize:,} keys")
        # settled: the node's counts equal DBSIZE, or (the census being a census) they and
        # the notifications taken in stopped changing for 5 s with no scan running
        settled: float | None = None
        exact = False
        last: tuple[Any, ...] = ()
        changed = write_end
        deadline = time.monotonic() + args.settle_timeout
        while time.monotonic() < deadline:
            omems.append(omem(client))
            node = web.node()["node"]
            now = time.monotonic()
            feeds.add(node.get("feed", ""))
            buffers.append(node.get("sub_buffer") or 0)
            busy = "%" in node.get("scan", "") or "paused" in node.get("feed", "")
            current = (node.get("keys", 0), node.get("summarised", 0), node.get("events", 0), busy)
            if current != last:
                last, changed = current, now
            if node.get("keys", 0) + node.get("summarised", 0) == dbsize:
                settled, exact = now - write_end, True
                break
            if not busy and now - changed >= 5:
                settled = changed - write_end
                break
            time.sleep(0.25)
        state = web.node()
        node = state["node"]
        paused = any("paused" in f for f in feeds)
        warnings = [
            line["text"]
            for line in state["log"]
            if line["level"] != "info" and "acquired" not in line["text"]
        ]
        peak = web.watch.peak()
        max_omem = max(omems, default=0)
        say(
            f"  our subscriber's output buffer (CLIENT LIST omem): max {mib(max_omem)};"
            f" the node showed up to {mib(max(buffers, default=0))}"
        )
        say(
            f"  node: gaps {node.get('gaps')}, feed now {node.get('feed')!r}; paused during the run: {paused}"
        )
        for text in warnings[-4:]:
            say(f"    log: {text[:150]}")
        listed = node.get("keys", 0) + node.get("summarised", 0)
        if settled is None:
            when = f"still changing after {args.settle_timeout:.0f}s"
        else:
            when = f"{settled:.1f}s after the last write" + ("" if exact else " (stable, not equal)")
        say(
            f"  node counts {node.get('keys', 0):,} listed + {node.get('summarised', 0):,} summarised"
            f" = {listed:,} of {dbsize:,} keys ({listed - dbsize:+,}): settled {when}"
        )
        say(f"  web RSS: before {mib(before_rss)}, peak {mib(peak)}, final {mib(web.watch.last())}")
        figure(section, "raw redis-benchmark write rate (baseline)", f"{rate:,.0f} SET/s")
        figure(section, "subscriber omem max", mib(max_omem), "< 32 MiB (pub/sub limit)", max_omem < 32 * MIB)
        # A gap is any span whose notifications we did not read one by one: a subscription
        # the server cut (what must not happen) or a burst we only counted (by design, past
        # Limits.dirty_keys: then resynced by a scan).
        log = [line["text"] for line in state["log"]]
        lost = sum("subscription ended" in t or "subscription was lost" in t for t in log)
        bursts = sum("faster than we read keys back" in t for t in log)
        figure(section, "subscriptions lost (cut by the server)", str(lost), "0", lost == 0)
        figure(section, "gaps: bursts only counted, then rescanned", f"{node.get('gaps')} ({bursts} bursts)")
        figure(section, "feed paused (by design past 8 MiB)", "yes" if paused else "no")
        figure(
            section,
            "key counts settle",
            when,
            f"<= {args.settle_timeout:.0f} s",
            settled is not None,
        )
        figure(
            section,
            "listed + summarised vs DBSIZE",
            f"{listed:,} ({listed - dbsize:+,})",
            f"= {dbsize:,}",
            listed == dbsize,
        )
        figure(section, "web RSS peak", mib(peak), "<= 150 MiB", peak <= 150 * MIB)
    finally:
        if web is not None:
            web.stop()
        client.close()
        stop(server)


# --------------------------------------------------------------------------- 2


class Silent:
    """A websocket viewer that sends the handshake and never reads a byte."""

    def __init__(self, web_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", web_port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?batch=1 HTTP/1.1\r\nHost: 127.0.0.1:{web_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.port = self.sock.getsockname()[1]
        self.at = time.time()

    def close(self) -> None:
        self.sock.close()


async def raw_latency_paced(port: int, samples: int, gap_s: float, until: float) -> list[float]:
    """SET -> keyspace notification to a bare redis-py subscriber, one at a time, ms."""
    sub = AsyncRedis(port=port, protocol=2)
    pubsub = sub.pubsub()
    await pubsub.psubscribe("__keyspace@0__:benchlat:*")
    await pubsub.get_message(timeout=1)
    writer = AsyncRedis(port=port)
    out: list[float] = []
    try:
        for i in range(samples):
            if time.monotonic() > until:
                break
            t0 = time.perf_counter()
            await writer.set(f"benchlat:{i % 100}", "x")
            async with asyncio.timeout(5):
                while True:
                    message = await pubsub.get_message(timeout=1)
                    if message and message["type"] == "pmessage":
                        break
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(gap_s)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sub.aclose()
        await writer.aclose()
    return out


def _lines(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    yield from proc.stdout


def many_viewers(args: argparse.Namespace, folder: Path) -> None:
    counts = [int(c) for c in args.viewers.split(",") if c.strip()]
    say(
        f"== 2. many viewers: {', '.join(map(str, counts))}; 2,000 SET/s for {args.seconds:.0f}s each;"
        f" websocket compression {args.ws_compression} =="
    )
    port, server = start_redis(folder / "redis-2")
    client = redis.Redis(port=port)
    try:
        for count in counts:
            client.flushall()
            one_count(args, folder / f"viewers-{count}", port, count)
    finally:
        client.close()
        stop(server)


def one_count(args: argparse.Namespace, folder: Path, port: int, count: int) -> None:
    section = f"2 viewers x{count}"
    web = Web(port, folder / "web")
    viewers: subprocess.Popen[str] | None = None
    writer: subprocess.Popen[Any] | None = None
    silent: Silent | None = None
    try:
        web.wait_ready()
        web.wait_scanned(10)
        say(f"  x{count}: web process pid {web.proc.pid} on port {web.port}")
        seen_file, writes_file = folder / "seen.json", folder / "writes.json"
        viewers = spawn(
            [
                *(sys.executable, str(HERE / "viewers.py"), "viewers"),
                *("--url", f"ws://127.0.0.1:{web.port}/ws?batch=1", "--count", str(count)),
                *("--out", str(seen_file), "--max-seconds", str(args.seconds + 90)),
                *("--compression", args.ws_compression),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.extend(_lines(viewers)), daemon=True)
        reader.start()
        deadline = time.monotonic() + 90
        while "ready\n" not in ready and time.monotonic() < deadline and viewers.poll() is None:
            time.sleep(0.05)
        if "ready\n" not in ready:
            say(f"  x{count}: the viewers did not connect in time")
            figure(section, "viewers connected", "no", "yes", False)
            return
        viewer_watch = Watch(viewers.pid, every=0.5)
        silent = Silent(web.port)
        load_start, load_wall = time.monotonic(), time.time()
        writer = spawn(
            [
                *(sys.executable, str(HERE / "viewers.py"), "writer", "--port", str(port)),
                *("--seconds", str(args.seconds), "--out", str(writes_file)),
            ],
        )
        samples = int(args.seconds * 5)
        raw = asyncio.run(raw_latency_paced(port, samples, 0.15, until=time.monotonic() + args.seconds))
        drop_polled: float | None = None
        while writer.poll() is None and time.monotonic() < load_start + args.seconds + 30:
            if drop_polled is None:
                drop_polled = _dropped(web, silent)
            time.sleep(0.5)
        load_end = time.monotonic()
        stop(writer)
        time.sleep(3)  # the last writes reach the viewers
        if drop_polled is None:
            drop_polled = _dropped(web, silent)
        assert viewers.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            viewers.stdin.write("stop\n")
            viewers.stdin.flush()
        try:
            viewers.wait(60)
        except subprocess.TimeoutExpired:
            say("  the viewers process did not stop: killed")
        stop(viewers)
        viewer_watch.close()
        seen = json.loads(seen_file.read_text())
        wrote = json.loads(writes_file.read_text())
        _report_count(
            load_wall,
            args,
            section,
            count,
            web,
            viewer_watch,
            silent,
            seen,
            wrote,
            raw,
            drop_polled,
            load_start,
            load_end,
        )
    finally:
        if silent is not None:
            silent.close()
        for proc in (writer, viewers):
            if proc is not None:
                stop(proc)
        web.stop()


def _dropped(web: Web, silent: Silent) -> float | None:
    """When the log said the silent viewer was dropped (seconds after it connected), if it did."""
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        for line in web.node()["log"]:
            if "read nothing for" in line["text"] and f":{silent.port} " in line["text"]:
                return float(line["at_ms"]) / 1000 - silent.at
    return None


def _report_count(
    load_wall: float,
    args: argparse.Namespace,
    section: str,
    count: int,
    web: Web,
    viewer_watch: Watch,
    silent: Silent,
    seen: dict[str, Any],
    wrote: dict[str, Any],
    raw: list[float],
    drop_polled: float | None,
    load_start: float,
    load_end: float,
) -> None:
    writes = wrote["writes"]
    coverage = []
    for viewer in seen["viewers"]:
        highest = viewer["highest"]
        covered = sum(1 for i, ns in writes if highest.get(f"bench:lock:{i}", 0) >= ns)
        coverage.append(covered / max(1, len(writes)))
    drop_at = next((at - silent.at for at, text in seen["drops"] if f":{silent.port} " in text), drop_polled)
    window = min(10.0, (load_end - load_start) / 3)
    cpu_start = web.watch.cpu(load_start, load_start + window)
    cpu_end = web.watch.cpu(load_end - window, load_end)
    rss_start, rss_end = web.watch.rss_at(load_start), web.watch.rss_at(load_end)
    rss_mid = web.watch.rss_at((load_start + load_end) / 2)
    flat = rss_end - rss_mid <= max(5 * MIB, 0.05 * rss_mid)
    resyncs = sum(v["snapshots"] - 1 for v in seen["viewers"])
    repeats = sum(v["repeats"] for v in seen["viewers"]) / count
    closed = sum(1 for v in seen["viewers"] if v["closed"] and "ConnectionClosedOK" not in v["closed"])
    mbytes = sum(v["bytes"] for v in seen["viewers"]) / count / max(1e-9, seen["wall_s"])
    raw50, raw99 = percentile(raw, 50), percentile(raw, 99)
    goal99 = 100.0 if count <= 10 else 500.0
    say(
        f"  x{count}: writer {wrote['sets']:,} SETs in {wrote['elapsed_s']:.1f}s"
        f" ({len(writes):,} lock writes; worst {wrote['worst_behind_ms']:.0f} ms behind its pace)"
    )
    say(
        f"    store -> viewer (lock token -> batch received): p50 {seen['p50_ms']:.1f} ms,"
        f" p99 {seen['p99_ms']:.1f} ms, max {seen['max_ms']:.0f} ms over {seen['samples']:,} new tokens"
        f" (+{repeats:,.0f} upserts per viewer repeating a token already seen)"
    )
    say(
        f"    baseline SET -> keyspace notification, bare redis-py ({len(raw)} samples under the same load):"
        f" p50 {raw50:.2f} ms, p99 {raw99:.2f} ms;  ratio p50 {seen['p50_ms'] / max(raw50, 1e-9):.0f}x"
    )
    say(
        f"    lock writes covered per viewer: min {100 * min(coverage):.2f}%, mean"
        f" {100 * sum(coverage) / len(coverage):.2f}%; resync snapshots {resyncs}; closed early {closed};"
        f" {mbytes / 1000:,.0f} kB/s per viewer"
    )
    say(
        f"    web CPU {cpu_start:.0f}% (first {window:.0f}s) -> {cpu_end:.0f}% (last {window:.0f}s);"
        f" RSS {mib(rss_start)} -> {mib(rss_mid)} (half-way) -> {mib(rss_end)}"
        f" ({'flat' if flat else 'growing'} in the second half);"
        f" viewers process CPU {seen['cpu_pct']:.0f}%"
    )
    slow = [f"{int(sec - load_wall)}s:{ms:.0f}" for sec, ms in seen["worst_by_second"] if ms > 100]
    if slow:
        say(f"    seconds into the load with a latency over 100 ms (worst ms): {' '.join(slow[:30])}")
    dropped = f"after {drop_at:.1f}s" if drop_at is not None else "not dropped"
    say(f"    silent viewer (raw socket, SO_RCVBUF 4 KiB, never reads): {dropped}")
    figure(section, "store->viewer p50", f"{seen['p50_ms']:.1f} ms")
    figure(
        section,
        "store->viewer p99",
        f"{seen['p99_ms']:.1f} ms",
        f"<= {goal99:.0f} ms",
        seen["p99_ms"] <= goal99,
    )
    figure(section, "baseline SET->notification p50/p99", f"{raw50:.2f} / {raw99:.2f} ms")
    figure(
        section,
        "lock writes covered (worst viewer)",
        f"{100 * min(coverage):.2f}%",
        "100%",
        min(coverage) >= 0.9999,
    )
    figure(section, "web CPU start -> end", f"{cpu_start:.0f}% -> {cpu_end:.0f}%")
    figure(
        section,
        "web RSS start -> half-way -> end",
        f"{mib(rss_start)} -> {mib(rss_mid)} -> {mib(rss_end)}",
        "flat 2nd half (<= +5%)",
        flat,
    )
    figure(section, "silent viewer dropped", dropped, "dropped", drop_at is not None)


# --------------------------------------------------------------------------- 3


def keyspace_ingest(args: argparse.Namespace, folder: Path) -> None:
    section = "3 keyspace ingest"
    say(f"== 3. keyspace ingest (bench/keyspace.py): {args.sets:,} SETs over {args.set_keys:,} keys ==")
    from bench import keyspace

    port = free_port()
    (folder / "redis-3").mkdir(parents=True, exist_ok=True)
    server = keyspace.start_server(port, folder / "redis-3")
    STARTED.append(server)

    async def run() -> tuple[float, tuple[float, float, int], list[float], list[float]]:
        flush = redis.Redis(port=port)
        raw = await keyspace.raw_throughput(port, args.sets, args.set_keys)
        flush.flushall()
        ours = await keyspace.coordscope_throughput(port, args.sets, args.set_keys)
        flush.flushall()
        raw_lat = await keyspace.raw_latency(port, args.samples)
        our_lat = await keyspace.coordscope_latency(port, args.samples)
        flush.close()
        return raw, ours, raw_lat, our_lat

    try:
        raw, (ours, converged, coalesced), raw_lat, our_lat = asyncio.run(run())
    finally:
        stop(server)
    raw50, our50 = percentile(raw_lat, 50), percentile(our_lat, 50)
    raw99, our99 = percentile(raw_lat, 99), percentile(our_lat, 99)
    say(f"  raw redis-py listen(): {raw:,.0f} events/s; coordscope: {ours:,.0f} events/s")
    say(f"  ratio ours/raw {ours / raw:.2f}x")
    say(f"  coalesced {coalesced:,}; state current {converged:.0f} ms after the last write")
    say(
        f"  latency p50/p99: raw {raw50:.0f}/{raw99:.0f} us, coordscope {our50:.0f}/{our99:.0f} us;"
        f" ratio p50 {our50 / raw50:.2f}x"
    )
    figure(
        section,
        "ingest ours/raw",
        f"{ours / raw:.2f}x ({ours:,.0f} vs {raw:,.0f}/s)",
        ">= 1.0x",
        ours / raw >= 1.0,
    )
    figure(
        section,
        "latency p50 ours/raw",
        f"{our50 / raw50:.2f}x ({our50:.0f} vs {raw50:.0f} us)",
        "<= 2.5x",
        our50 / raw50 <= 2.5,
    )


# --------------------------------------------------------------------------- 4


def zookeeper(args: argparse.Namespace, folder: Path) -> None:
    section = "4 zookeeper"
    say("== 4. ZooKeeper watches (bench/zk_watch.py) ==")
    from app.cluster import LocalCluster
    from bench.zk_watch import measure

    cluster = LocalCluster(folder / "cluster")
    try:
        info, _ = cluster.up()
        hosts = info.zk_targets()[0].hosts
        figures = measure(hosts, args.zk_changes)
    finally:
        cluster.down()
    for name, value in sorted(figures.items()):
        say(f"  {name}: {value:,.3f}" if isinstance(value, float) else f"  {name}: {value}")
    for name, value in sorted(figures.items()):
        if name.endswith("_ratio"):
            good = None if "kazoo" in name or "one_shot" in name else value >= 0.999
            figure(section, name, f"{value:.3f}", "1.000" if good is not None else "", good)


# --------------------------------------------------------------------------- main


def summary() -> None:
    say()
    say("== summary ==")
    widths = [max(len(f.section) for f in FIGURES), max(len(f.name) for f in FIGURES)]
    value_w = max(len(f.value) for f in FIGURES)
    goal_w = max(len(f.goal) for f in FIGURES)
    for f in FIGURES:
        verdict = "" if f.ok is None else "PASS" if f.ok else "MISS"
        cells = (f.section.ljust(widths[0]), f.name.ljust(widths[1]), f.value.ljust(value_w))
        say(f"{'  '.join(cells)}  {f.goal:<{goal_w}}  {verdict}")
    judged = [f for f in FIGURES if f.ok is not None]
    say(f"{sum(f.ok for f in judged if f.ok)} of {len(judged)} goals met")


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], None]] = {
    "1a": written_before,
    "1b": written_while_watching,
    "2": many_viewers,
    "3": keyspace_ingest,
    "4": zookeeper,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="100k keys, 30 s per viewer count, smaller samples"
    )
    parser.add_argument("--keys", type=int, help="keys written before the viewer (default 1,000,000)")
    parser.add_argument("--writes", type=int, help="SETs written while watching (default: --keys)")
    parser.add_argument("--locks", type=int, default=1000, help="locks among the keys written before")
    parser.add_argument("--viewers", default="10,100", help="viewer counts, comma-separated")
    parser.add_argument("--seconds", type=float, help="load per viewer count (default 60)")
    parser.add_argument(
        "--ws-compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the viewers offer (a browser offers permessage-deflate)",
    )
    parser.add_argument("--sets", type=int, help="keyspace ingest SETs (default 200,000)")
    parser.add_argument("--set-keys", type=int, default=10_000, help="keyspace ingest distinct keys")
    parser.add_argument("--samples", type=int, help="keyspace latency samples (default 500)")
    parser.add_argument("--zk-changes", type=int, help="ZooKeeper changes (default 2000)")
    parser.add_argument("--scan-timeout", type=float, help="bound on the 1a scan (default 300 s)")
    parser.add_argument("--settle-timeout", type=float, help="bound on the 1b settling (default 180 s)")
    parser.add_argument("--only", default="1a,1b,2,3,4", help="sections to run, e.g. 1a,2")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "keys": 100_000 if quick else 1_000_000,
        "seconds": 30.0 if quick else 60.0,
        "sets": 100_000 if quick else 200_000,
        "samples": 300 if quick else 500,
        "zk_changes": 500 if quick else 2000,
        "scan_timeout": 120.0 if quick else 300.0,
        "settle_timeout": 60.0 if quick else 180.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS and s != "1"]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    if "1" in wanted:
        wanted += ["1a", "1b"]

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    say(
        f"coordscope at scale{' (--quick)' if args.quick else ''}: keys {args.keys:,},"
        f" viewers {args.viewers}, {args.seconds:.0f}s per viewer count; {os.cpu_count()} cores"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="coordscope-scale-") as tmp:
            for name, run in SECTIONS.items():
                if name not in wanted:
                    continue
                t0 = time.monotonic()
                try:
                    run(args, Path(tmp) / name)
                except (RuntimeError, OSError, redis.RedisError, TimeoutError, ValueError, KeyError) as exc:
                    say(f"  section {name} failed: {type(exc).__name__}: {exc}")
                    figure(name, "section", f"failed: {type(exc).__name__}", "runs", False)
                say(f"  ({time.monotonic() - t0:.0f}s)")
    finally:
        for proc in reversed(list(STARTED)):
            stop(proc)
    if FIGURES:
        summary()
    say(f"took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
