"""A run's narration, written to the stores so that every viewer reads the same.

- ``coordscope:run:<id>`` (hash): scenario, params, faults, status, actors,
  started/ended times, the verdict (JSON), the error if any;
- ``coordscope:history:<id>`` (stream): one entry per operation (``op`` =
  the JSON of :class:`collectors.runs.Op`).

Actors never wait on Redis to narrate: :meth:`History.record` stamps the op
and queues it; one writer task appends the queue in order with pipelined
``XADD``s. If the control node is unreachable the writer keeps the ops and
retries, so a run survives a fault on the node it narrates to; the local
copy (``History.ops``) is what the checker judges.
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
from collectors.runs import Op
from collectors.state import now_ms

RETAIN_S = 24 * 3600
"""Finished runs stay readable this long, then Redis expires them."""


class History:
    def __init__(self, client: Redis, run_id: str, echo: Callable[[Op], None] | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.ops: list[Op] = []
        self._pending: list[Op] = []
        self._wakeup = asyncio.Event()
        self._started = time.monotonic()
        self._echo = echo
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.write_errors = 0

    @property
    def key(self) -> str:
        return coordscope.history_key(self.run_id)

    def t_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"history {self.run_id}")

    def record(
        self,
        actor: str,
        kind: str,
        f: str,
        *,
        key: str = "",
        value: Any = "",
        fence: int | None = None,
        ttl_ms: int | None = None,
        note: str = "",
    ) -> Op:
        op = Op(
            index=len(self.ops),
            t_ms=self.t_ms(),
            actor=actor,
            kind=kind,
            f=f,
            key=key,
            value=value if isinstance(value, str) else json.dumps(value),
            fence=fence,
            ttl_ms=ttl_ms,
            note=note,
        )
        self.ops.append(op)
        self._pending.append(op)
        self._wakeup.set()
        if self._echo is not None:
            try:
                self._echo(op)
            except Exception:  # a closed terminal (`| head`) must not stop the run
                self._echo = None
        return op

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
                    await pipe.execute()
                except (redis_errors.RedisError, OSError):
                    self.write_errors += 1
                    if self._closing:
                        return
                    await asyncio.sleep(0.2)
                    continue
                del self._pending[: len(batch)]
            if self._closing:
                return

    async def close(self, timeout: float = 3.0) -> None:
        """Flush what is queued (giving up after ``timeout``) and stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, timeout)
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(BaseException):
                    await self._writer


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

    async def heartbeat(self, every_s: float = 1.0) -> None:
        """While the run goes: a sign of life, so viewers can tell a run whose process
        died (it stays "running" in the store) from one that is still working."""
        while True:
            await self.update(alive_ms=str(now_ms()))
            await asyncio.sleep(every_s)

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
        for _ in range(20):  # the control node may be restarting after a fault
            try:
                mapping: dict[Any, Any] = {
                    k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()
                }
                pipe = self._client.pipeline(transaction=False)
                pipe.hset(self.key, mapping=mapping)
                pipe.expire(self.key, RETAIN_S)
                pipe.expire(coordscope.history_key(self.run_id), RETAIN_S)
                await pipe.execute()
                return
            except (redis_errors.RedisError, OSError):
                await asyncio.sleep(0.25)
