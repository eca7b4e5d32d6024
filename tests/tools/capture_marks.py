"""Run real idempotency libraries against a Redis and print exactly what they leave there.

This is how the tables in :mod:`collectors.layouts.idempotency` and the bytes in
``tests/unit/test_idempotency_layouts.py`` were obtained; rerun it when a library
changes. It drives each library the way its documentation says, pauses the
handler mid-call to read the store while the call is *in progress*, then reads
it again after the call *completed* and after a call *failed*, and prints:

- every key (name, type, exact value bytes, PTTL) at each of those moments;
- the keyspace events in the order they arrived (``__keyspace@0__:*``);
- every command the library sent (``MONITOR``, exact arguments), which is what
  ``tests/integration/test_foreign_marks.py`` replays for node-idempotency.

Usage (a private, throw-away Redis: the script FLUSHALLs it)::

    redis-server --port 24711 --bind 127.0.0.1 --save "" --appendonly no \\
        --notify-keyspace-events KEA &
    .venv/bin/python -m tests.tools.capture_marks --port 24711 powertools
    # node-idempotency: npm i @node-idempotency/core @node-idempotency/storage-adapter-redis
    # in a scratch folder, then
    .venv/bin/python -m tests.tools.capture_marks --port 24711 node --node-dir /tmp/idem-lab/node

The script never runs against a server it was not pointed at, and stops the
processes it starts (``redis-cli monitor``, a Powertools "victim" it SIGKILLs
to leave an orphan record, the node program) by their PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
NODE_PROGRAM = HERE / "node_idempotency_capture.js"


# ------------------------------------------------------------------ observing the store


class Observer:
    """Keyspace events (redis-py pub/sub) and MONITOR (``redis-cli``), both in arrival order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client = redis.Redis(port=port)
        self.events: list[tuple[float, str, str]] = []
        self.commands: list[tuple[float, list[bytes]]] = []
        self._pubsub = redis.Redis(port=port).pubsub()  # type: ignore[no-untyped-call]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._monitor: subprocess.Popen[bytes] | None = None
        self._own = str(self.client.client_info()["addr"]).encode()
        """Our own connection's address: its SCAN/GET/... are left out of the command log."""

    def start(self) -> None:
        self._pubsub.psubscribe("__keyspace@0__:*")
        self._threads.append(threading.Thread(target=self._read_events, daemon=True))
        self._monitor = subprocess.Popen(
            ["redis-cli", "-p", str(self.port), "monitor"], stdout=subprocess.PIPE
        )
        self._threads.append(threading.Thread(target=self._read_monitor, daemon=True))
        for t in self._threads:
            t.start()
        time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            os.kill(self._monitor.pid, signal.SIGTERM)
            self._monitor.wait(5)
        self._pubsub.close()

    def mark(self) -> tuple[int, int]:
        time.sleep(0.1)  # let the last event and command arrive
        return len(self.events), len(self.commands)

    def _read_events(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "pmessage":
                key = msg["channel"].decode(errors="backslashreplace").split(":", 1)[1]
                self.events.append((time.time(), key, msg["data"].decode()))

    def _read_monitor(self) -> None:
        assert self._monitor is not None and self._monitor.stdout is not None
        for line in self._monitor.stdout:
            if line.startswith(b"OK"):
                continue
            stamp, _, rest = line.partition(b" [")
            source, _, args = rest.partition(b"] ")
            if source.split(b" ")[-1] == self._own:
                continue
            argv = parse_monitor_args(args.rstrip(b"\r\n"))
            if argv and argv[0].upper() not in (b"PSUBSCRIBE", b"PING", b"CLIENT", b"HELLO"):
                self.commands.append((float(stamp), argv))

    def snapshot(self, title: str) -> None:
        print(f"\n### {title}\n")
        print("| key | type | value (exact bytes) | PTTL ms |")
        print("|---|---|---|---|")
        keys = sorted(self.client.scan_iter(count=1000))
        if not keys:
            print("| (no keys) | | | |")
        for key in keys:
            raw = self.client.type(key)
            kind = raw.decode() if isinstance(raw, bytes) else raw
            if kind == "string":
                value: Any = self.client.get(key)
            elif kind == "hash":
                value = self.client.hgetall(key)
            else:
                value = f"<{kind}>"
            print(f"| `{key!r}` | {kind} | `{value!r}` | {self.client.pttl(key)} |")

    def print_since(self, since: tuple[int, int], title: str) -> None:
        e0, c0 = since
        print(f"\n#### {title}: keyspace events, in order\n")
        for stamp, key, event in self.events[e0:]:
            print(f"- {stamp:.3f} `{event}` `{key}`")
        print(f"\n#### {title}: commands (MONITOR)\n")
        for stamp, argv in self.commands[c0:]:
            print(f"- {stamp:.6f} {' '.join(repr(a) for a in argv)}")


def parse_monitor_args(line: bytes) -> list[bytes]:
    """Split one MONITOR line's quoted arguments (``"SET" "k" "v\\"x"``) back into bytes."""
    args: list[bytes] = []
    i = 0
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}
    while i < len(line):
        if line[i] != ord('"'):
            i += 1
            continue
        i += 1
        out = bytearray()
        while i < len(line) and line[i] != ord('"'):
            c = line[i]
            if c == ord("\\") and i + 1 < len(line):
                nxt = line[i + 1]
                if nxt == ord("x"):
                    out += bytes([int(line[i + 2 : i + 4], 16)])
                    i += 4
                    continue
                out += escapes.get(nxt, bytes([nxt]))
                i += 2
                continue
            out.append(c)
            i += 1
        args.append(bytes(out))
        i += 1
    return args


@contextmanager
def observing(port: int) -> Iterator[Observer]:
    obs = Observer(port)
    obs.client.flushall()
    obs.start()
    try:
        yield obs
    finally:
        obs.stop()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


# ------------------------------------------------------------------ Powertools (Python)


class LambdaContextStandIn:
    """What the ``@idempotent`` decorator reads from a Lambda context: the time left."""

    function_name = "capture"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self, remaining_ms: int = 30_000) -> None:
        self._deadline = time.time() * 1000 + remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline - time.time() * 1000))


def powertools_layer(port: int) -> Any:
    import warnings

    from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer

    with warnings.catch_warnings():  # RedisCachePersistenceLayer's own deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return CachePersistenceLayer(host="127.0.0.1", port=port, ssl=False)


GATE = threading.Event()
"""Holds :func:`charge` mid-call until set, so the store can be read while it is in progress."""
FAIL = threading.Event()


def charge(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler under test (one module-level function: the key names it)."""
    GATE.wait(10)
    if FAIL.is_set():
        raise RuntimeError("card declined")
    return {"statusCode": 200, "body": json.dumps({"payment_id": "pay-1", "message": "success"})}


def idempotent_charge(port: int, config: Any, key_prefix: str | None = None) -> Callable[..., Any]:
    from aws_lambda_powertools.utilities.idempotency import idempotent

    wrap = idempotent(config=config, persistence_store=powertools_layer(port), key_prefix=key_prefix)
    return wrap(charge)


def in_thread(handler: Callable[..., Any], event: dict[str, Any], ctx: Any) -> threading.Thread:
    def run() -> None:
        try:
            handler(event, ctx)
        except Exception as exc:
            print(f"\n(handler raised {type(exc).__name__}: {exc})")

    t = threading.Thread(target=run)
    t.start()
    return t


def powertools(port: int) -> None:
    import aws_lambda_powertools
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    versions = f"{aws_lambda_powertools.__version__}, redis-py {redis.__version__}"
    print(f"# Powertools for AWS Lambda (Python) {versions}")
    os.environ.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    with observing(port) as obs:
        # (a)+(b) the default config: the whole event is hashed; no Lambda function name in the env
        handler = idempotent_charge(port, IdempotencyConfig())
        since = obs.mark()
        GATE.clear()
        t = in_thread(handler, {"user_id": "u-1", "product_id": "p-9"}, LambdaContextStandIn(30_000))
        wait_for(lambda: obs.client.dbsize() == 1, "the in-progress record")
        obs.snapshot("Powertools, default config: IN PROGRESS (handler blocked, 30 s of Lambda time left)")
        # a duplicate while in progress: what does it write?
        in_thread(handler, {"user_id": "u-1", "product_id": "p-9"}, LambdaContextStandIn(30_000)).join(10)
        GATE.set()
        t.join(10)
        obs.snapshot("Powertools, default config: COMPLETED")
        obs.print_since(since, "default config (in progress, duplicate, completed)")

        # a named Lambda, an event key, payload validation, sha256, a 10-minute expiry
        obs.client.flushall()
        os.environ["AWS_LAMBDA_FUNCTION_NAME"] = "payments-fn"
        handler = idempotent_charge(
            port,
            IdempotencyConfig(
                event_key_jmespath="order_id",
                payload_validation_jmespath="amount",
                hash_function="sha256",
                expires_after_seconds=600,
            ),
        )
        since = obs.mark()
        GATE.clear()
        t = in_thread(handler, {"order_id": "o-7", "amount": 1250}, LambdaContextStandIn(30_000))
        wait_for(lambda: obs.client.dbsize() == 1, "the in-progress record")
        obs.snapshot("Powertools, AWS_LAMBDA_FUNCTION_NAME + event key + validation + sha256: IN PROGRESS")
        GATE.set()
        t.join(10)
        obs.snapshot("Powertools, AWS_LAMBDA_FUNCTION_NAME + event key + validation + sha256: COMPLETED")
        obs.print_since(since, "validation config")
        os.environ.pop("AWS_LAMBDA_FUNCTION_NAME")

        # (c) the handler raises (with a key_prefix)
        obs.client.flushall()
        handler = idempotent_charge(
            port, IdempotencyConfig(event_key_jmespath="order_id"), key_prefix="payments"
        )
        since = obs.mark()
        GATE.clear()
        FAIL.set()
        t = in_thread(handler, {"order_id": "o-8"}, LambdaContextStandIn(30_000))
        wait_for(lambda: obs.client.dbsize() == 1, "the in-progress record")
        obs.snapshot("Powertools, key_prefix, failing handler: IN PROGRESS")
        GATE.set()
        t.join(10)
        FAIL.clear()
        obs.snapshot("Powertools, key_prefix, failing handler: after it raised")
        obs.print_since(since, "failing handler")

        # (d) an orphan: the invocation dies (SIGKILL, as a Lambda timeout does) with 1.5 s left
        obs.client.flushall()
        since = obs.mark()
        victim = subprocess.Popen(
            [sys.executable, "-m", "tests.tools.capture_marks", "--port", str(port), "powertools-victim"],
            stdout=subprocess.PIPE,
        )
        assert victim.stdout is not None
        victim.stdout.readline()  # READY: its record is written and the handler is blocked
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        obs.snapshot("Powertools, invocation killed mid-call (1.5 s of Lambda time were left)")
        time.sleep(1.6)
        obs.snapshot("Powertools, 1.6 s later: in_progress_expiration has passed (an orphan)")
        handler = idempotent_charge(port, IdempotencyConfig(event_key_jmespath="order_id"))
        GATE.clear()
        t = in_thread(handler, {"order_id": "o-9"}, LambdaContextStandIn(30_000))
        wait_for(lambda: obs.client.dbsize() == 2, "the take-over")
        obs.snapshot("Powertools, a retry took the orphan over: IN PROGRESS again")
        GATE.set()
        t.join(10)
        obs.snapshot("Powertools, the retry COMPLETED")
        obs.print_since(since, "orphan take-over")


def powertools_victim(port: int) -> None:
    """The invocation that is killed: writes its in-progress record, says READY, blocks."""
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    handler = idempotent_charge(port, IdempotencyConfig(event_key_jmespath="order_id"))
    in_thread(handler, {"order_id": "o-9"}, LambdaContextStandIn(1_500))
    client = redis.Redis(port=port)
    wait_for(lambda: client.dbsize() == 1, "the victim's record")
    print("READY", flush=True)
    time.sleep(60)


# ------------------------------------------------------------------ node-idempotency


def node(port: int, node_dir: Path) -> None:
    """Run the node program step by step: it prints a step name and waits for a line on stdin."""
    env = dict(os.environ, NODE_PATH=str(node_dir / "node_modules"), REDIS_PORT=str(port))
    with observing(port) as obs:
        proc = subprocess.Popen(
            ["node", str(NODE_PROGRAM)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=node_dir,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            since = obs.mark()
            for raw in proc.stdout:
                line = raw.decode().rstrip("\n")
                if not line.startswith("STEP "):
                    print(line)
                    continue
                step = line[5:]
                obs.snapshot(f"node-idempotency: {step}")
                obs.print_since(since, step)
                since = obs.mark()
                proc.stdin.write(b"next\n")
                proc.stdin.flush()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node-dir", type=Path, default=Path("/tmp/idem-lab/node"))
    parser.add_argument("library", choices=["powertools", "powertools-victim", "node"])
    args = parser.parse_args(argv)
    if args.library == "powertools":
        powertools(args.port)
    elif args.library == "powertools-victim":
        powertools_victim(args.port)
    else:
        node(args.port, args.node_dir)


if __name__ == "__main__":
    main()
