"""A run's narration, written to the stores so that every viewer reads the same.

- ``coordscope:run:<id>`` (hash): scenario, params, faults, status, actors,
  started/ended times, the verdict (JSON), the error if any, a heartbeat,
  and the run's cleanup plan;
- ``coordscope:history:<id>`` (stream): one entry per operation (``op`` =
  the JSON of :class:`collectors.runs.Op`), written by the run and by every
  service it started, each a *source* with its own sequence numbers.

The run's actors never wait on Redis to narrate: :meth:`History.record`
stamps the op and queues it; one writer task appends the queue in order
with pipelined ``XADD``s. If the control node is unreachable the writer
keeps the ops and retries until it can (a retry may append an op twice:
readers keep the first copy). A service narrates each op before it goes on
(:class:`Narrator`): what it did is in the store before anyone hears of it.

At the end the run reads its history back (:meth:`History.read_back`, with
the collectors' own :class:`collectors.runs.HistoryReader`), checks that
every op it recorded is there in order (:meth:`History.missing`), and the
checker judges what was read back — what every viewer sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.runs import RUN_SOURCE, HistoryReader, Op
from collectors.state import now_ms

RETAIN_S = 24 * 3600
"""Finished runs stay readable this long, then Redis expires them."""
READ_PAGE = 2000


def _op(
    index: int,
    t_ms: int,
    src: str,
    actor: str,
    kind: str,
    f: str,
    *,
    key: str = "",
    value: Any = "",
    fence: int | None = None,
    ttl_ms: int | None = None,
    note: str = "",
    data: dict[str, Any] | None = None,
) -> Op:
    return Op(
        index=index,
        t_ms=t_ms,
        actor=actor,
        kind=kind,
        f=f,
        key=key,
        value=value if isinstance(value, str) else json.dumps(value),
        fence=fence,
        ttl_ms=ttl_ms,
        note=note,
        data=dict(data or {}),
        src=src,
        n=index,
    )


class History:
    """The run's own narration (source ``run``), and the history read back at the end."""

    def __init__(self, client: Redis, run_id: str) -> None:
        self._client = client
        self.run_id = run_id
        self.ops: list[Op] = []
        """Every op this process recorded, in order (what the store must hold)."""
        self._pending: list[Op] = []
        self._wakeup = asyncio.Event()
        self.t0 = time.monotonic()
        """The run's time origin (the machine's monotonic clock: services share it)."""
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.write_errors = 0
        """Writes the control node refused or never answered (each retried)."""
        self.watchers: list[Callable[[Op], None]] = []
        """Live checkers, told of every op as it is recorded."""

    @property
    def key(self) -> str:
        return coordscope.history_key(self.run_id)

    def t_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"history {self.run_id}")

    def record(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        op = _op(len(self.ops), self.t_ms(), RUN_SOURCE, actor, kind, f, **kw)
        if self._closing:
            return op  # the history is closed: nothing more goes into it (nor is expected there)
        self.ops.append(op)
        self._pending.append(op)
        self._wakeup.set()
        for watcher in self.watchers:
            watcher(op)
        return op

    @property
    def unwritten(self) -> int:
        return len(self._pending)

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = list(self._pending)
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for op in batch:
                        pipe.xadd(self.key, {"op": op.to_json()})
                    pipe.expire(self.key, RETAIN_S)  # like the run's hash: gone in a day, even if we die
                    await pipe.execute()
                except (redis_errors.RedisError, OSError):
                    # some of the batch may be stored already: it is written again, and
                    # readers keep the first copy of each op
                    self.write_errors += 1
                    await asyncio.sleep(0.2)
                    continue
                del self._pending[: len(batch)]
            if self._closing:
                return

    async def close(self, timeout: float = 30.0) -> int:
        """Write what is queued, trying for up to ``timeout`` (the control node may be
        restarting after a fault); returns how many ops could not be written."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(BaseException):
                    await self._writer
        return len(self._pending)

    async def read_back(self) -> list[Op]:
        """The whole history as the store holds it, read as every viewer reads it."""
        reader = HistoryReader()
        ops: list[Op] = []
        start = "-"
        while True:
            entries: Any = await self._client.xrange(self.key, min=start, count=READ_PAGE)
            ops += reader.feed(entries or [])
            if len(entries or []) < READ_PAGE:
                return ops
            start = "(" + bytes(entries[-1][0]).decode()

    def missing(self, stored: list[Op]) -> str:
        """How the stored history differs from what this process recorded ("" when it
        holds every op, unchanged and in order)."""
        mine = [op for op in stored if op.src == RUN_SOURCE]
        by_n = {op.n: op for op in mine}
        lost = [op for op in self.ops if op.n not in by_n]
        if lost:
            first = lost[0]
            return (
                f"the stored history lost {len(lost)} of the run's {len(self.ops)} operations "
                f"(the first: #{first.n}, {first.actor} {first.kind} {first.f} at {first.t_ms} ms)"
            )
        for op in self.ops:
            if not op.same(by_n[op.n]):
                got = by_n[op.n]
                return (
                    f"the stored history differs from what the actors did at operation #{op.n}: "
                    f"recorded {op.actor} {op.kind} {op.f}, stored {got.actor} {got.kind} {got.f}"
                )
        if [op.n for op in mine] != sorted(op.n for op in mine):
            return "the stored history holds the run's operations out of order"
        if len(mine) > len(self.ops):
            return f"the stored history holds {len(mine) - len(self.ops)} operation(s) the run never recorded"
        gaps = _gaps(stored)
        return f"the stored history lost operations of {gaps}" if gaps else ""


def source_of(name: str, incarnation: int) -> str:
    """The ``src`` a service's life narrates as: a restarted process counts from 0 again,
    so each life is a source of its own (``pay-2``, then ``pay-2#1``...)."""
    return name if not incarnation else f"{name}#{incarnation}"


def _gaps(stored: list[Op]) -> str:
    """Sources (services) whose sequence numbers skip: an op they wrote is missing. A life
    the run SIGKILLed is left out: what its requests were still writing died with it (the
    run's crash op names that life), which is the crash, not the store losing history."""
    killed = {
        str(op.data["source"])
        for op in stored
        if op.src == RUN_SOURCE and op.f == "crash" and "source" in op.data
    }
    seen: dict[str, list[int]] = {}
    for op in stored:
        if op.src != RUN_SOURCE and op.src not in killed:
            seen.setdefault(op.src, []).append(op.n)
    holes = []
    for src, ns in sorted(seen.items()):
        expected = set(range(max(ns) + 1))
        lost = sorted(expected - set(ns))
        if lost:
            holes.append(f"{src} (#{lost[0]}" + (f" and {len(lost) - 1} more)" if len(lost) > 1 else ")"))
    return ", ".join(holes)


async def follow(client: Redis, run_id: str, done: asyncio.Event, echo: Callable[[Op], None]) -> None:
    """Hand every op of a run's history to ``echo`` as the store holds it (every source,
    in stream order), until the run is ``done`` and the stream is read to its end."""
    key = coordscope.history_key(run_id)
    reader = HistoryReader()
    last = b"0-0"
    while True:
        finished = done.is_set()
        try:
            replies: Any = await client.xread({key: last}, count=500, block=200)
        except (redis_errors.RedisError, OSError):
            if finished:
                return
            await asyncio.sleep(0.2)
            continue
        for _stream, entries in replies or []:
            for op in reader.feed(entries):
                echo(op)
            last = entries[-1][0]
        if finished and not replies:
            return


class Narrator:
    """A service's narration: with :meth:`record` each op is in the store before the
    service goes on; with :meth:`later` ops are stamped now and written together at the
    next :meth:`flush`.

    Used by the processes a run starts (payment services, workers...), each its
    own source ``src`` in the run's history, on the run's time axis ``t0``.
    """

    def __init__(self, client: Redis, run_id: str, src: str, t0: float) -> None:
        self._client = client
        self.key = coordscope.history_key(run_id)
        self.src = src
        self.t0 = t0
        self._n = 0
        self.write_errors = 0
        self._pending: list[Op] = []
        self._flushing = asyncio.Lock()
        """One flush at a time: a flush returns only once every op kept before it is
        stored, also those a flush already under way took (a crash point's flush waits
        for the background flusher's pipeline instead of finding nothing to do)."""

    def t_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def op(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        op = _op(self._n, self.t_ms(), self.src, actor, kind, f, **kw)
        self._n += 1
        return op

    async def write(self, op: Op, pipe: Any = None) -> None:
        """Append ``op`` (on ``pipe``, when the caller sends it with other commands)."""
        if pipe is not None:
            pipe.xadd(self.key, {"op": op.to_json()})
            return
        for attempt in range(3):
            try:
                await self._client.xadd(self.key, {"op": op.to_json()})
                return
            except (redis_errors.RedisError, OSError):
                self.write_errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))

    async def record(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        op = self.op(actor, kind, f, **kw)
        await self.write(op)
        return op

    def later(self, actor: str, kind: str, f: str, **kw: Any) -> Op:
        """Stamp ``op`` now and keep it for the next :meth:`flush` (a service on a hot path
        narrates without a round trip per op; it flushes before anything it must not lose
        them to, such as a crash point)."""
        op = self.op(actor, kind, f, **kw)
        self._pending.append(op)
        return op

    async def flush(self) -> None:
        """Write the ops kept by :meth:`later`, in order, in one pipeline (retried)."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        ops, self._pending = self._pending, []
        for attempt in range(3):
            pipe = self._client.pipeline(transaction=False)
            for op in ops:
                await self.write(op, pipe)
            try:
                await pipe.execute()
                return
            except (redis_errors.RedisError, OSError):
                self.write_errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))


class RunRecord:
    """The run's hash: its status and verdict, as every viewer will see them."""

    def __init__(self, client: Redis, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    @property
    def key(self) -> str:
        return coordscope.run_key(self.run_id)

    async def create(
        self, scenario: str, params: dict[str, str | int], faults: list[str], owner: str
    ) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(
            self.key,
            mapping={
                "scenario": scenario,
                "status": "running",
                "params": json.dumps({k: str(v) for k, v in params.items()}),
                "faults": json.dumps(faults),
                "started_ms": str(now_ms()),
                "alive_ms": str(now_ms()),
                "owner": owner,
            },
        )
        pipe.expire(self.key, RETAIN_S)  # even a run whose process dies goes away in time
        await pipe.execute()

    async def heartbeat(
        self, extra: Callable[[], dict[str, str]], changed: asyncio.Event, every_s: float = 0.5
    ) -> None:
        """While the run goes: a sign of life, so viewers (and the run's janitor and
        services) can tell a run whose process died (it stays "running" in the store)
        from one that is still working. ``extra`` adds fields that changed (the cleanup
        plan), written at once when ``changed`` is set, not at the next beat."""
        while True:
            changed.clear()
            await self.update(alive_ms=str(now_ms()), **extra())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), every_s)

    async def update(self, **fields: Any) -> None:
        mapping: dict[Any, Any] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await self._client.hset(self.key, mapping=mapping)

    async def finish(self, status: str, verdict: dict[str, Any] | None, error: str = "") -> None:
        fields: dict[str, Any] = {"status": status, "ended_ms": str(now_ms())}
        if verdict is not None:
            fields["verdict"] = verdict
        if error:
            fields["error"] = error
        mapping: dict[Any, Any] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        for _ in range(40):  # the control node may be restarting after a fault
            try:
                pipe = self._client.pipeline(transaction=False)
                pipe.hset(self.key, mapping=mapping)
                pipe.expire(self.key, RETAIN_S)
                pipe.expire(coordscope.history_key(self.run_id), RETAIN_S)
                await pipe.execute()
                return
            except (redis_errors.RedisError, OSError):
                await asyncio.sleep(0.25)
