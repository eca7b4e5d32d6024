"""RedLock over N independent Redis masters, as redis.io describes it.

Acquire:

1. note the start time (a monotonic clock);
2. ``SET key token NX PX ttl`` on every master at once, each with a short
   timeout (``node_timeout_ms``) so a dead node cannot stall the attempt;
3. the lock is held iff a majority granted it **and** the time spent is less
   than the lease: validity = ttl − elapsed − drift, with drift = 1% of the
   ttl + 2 ms for clock rates that differ between nodes;
4. otherwise release it everywhere (compare-and-delete, so nobody else's lock
   goes) and let the caller retry after a random delay.

A client that skips the elapsed-time check (``elapsed_check=False``, a bug
seen in the wild) keeps a majority it obtained *after* its lease ran out —
the pause Kleppmann describes between sending the SETs and reading the
replies.

There is no fencing token here: RedLock does not make one. The value is
coordscope's lock JSON (owner and a random nonce) so observers can tell the
holders apart; each master's copy shows as one grant of the same lock.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.redis_keyspace import NETWORK_ERRORS
from scenarios.locks.redis_lock import RELEASE

GRANTED, DENIED, ERROR = "granted", "denied", "error"
CELL = {GRANTED: "■", DENIED: "□", ERROR: "✖"}


@dataclass(frozen=True)
class Attempt:
    value: str
    cells: dict[str, str]
    """Per master: granted, denied or error."""
    elapsed_ms: int
    validity_ms: int
    held: bool

    @property
    def granted(self) -> int:
        return sum(1 for c in self.cells.values() if c == GRANTED)

    def row(self) -> str:
        return "".join(CELL[self.cells[node]] for node in self.cells)


class Redlock:
    def __init__(
        self,
        clients: dict[str, Redis],
        name: str,
        owner: str,
        ttl_ms: int,
        node_timeout_ms: int = 50,
        drift_factor: float = 0.01,
    ) -> None:
        self.clients = clients
        self.name = name
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.key = coordscope.lock_key(name)
        self.node_timeout_ms = node_timeout_ms
        self.drift_ms = int(ttl_ms * drift_factor) + 2
        self.quorum = len(clients) // 2 + 1
        self._release = {node: c.register_script(RELEASE) for node, c in clients.items()}

    async def _set(self, node: str, value: str) -> str:
        try:
            async with asyncio.timeout(self.node_timeout_ms / 1000):
                ok = await self.clients[node].set(self.key, value, nx=True, px=self.ttl_ms)
        except NETWORK_ERRORS:
            return ERROR
        return GRANTED if ok else DENIED

    async def try_acquire(
        self, elapsed_check: bool = True, stall_s: float = 0.0, on_stall: Callable[[], None] | None = None
    ) -> Attempt:
        """One attempt. ``stall_s``: when the SETs won a majority, the client stalls before
        it looks at the replies (a GC pause) — what its elapsed-time check is for."""
        value = coordscope.lock_value(self.owner, None, secrets.token_hex(8))
        started = time.monotonic()
        results = await asyncio.gather(*(self._set(node, value) for node in self.clients))
        granted = sum(1 for r in results if r == GRANTED)
        if stall_s and granted >= self.quorum:
            if on_stall is not None:
                on_stall()
            await asyncio.sleep(stall_s)
        elapsed = int((time.monotonic() - started) * 1000)
        validity = self.ttl_ms - elapsed - self.drift_ms
        cells = dict(zip(self.clients, results, strict=True))
        held = granted >= self.quorum and (validity > 0 or not elapsed_check)
        attempt = Attempt(value=value, cells=cells, elapsed_ms=elapsed, validity_ms=validity, held=held)
        if not held and granted:
            await self.release(attempt)
        return attempt

    async def release(self, attempt: Attempt) -> int:
        """Compare-and-delete on every master; how many still held our value."""

        async def one(node: str) -> int:
            try:
                async with asyncio.timeout(max(0.2, self.node_timeout_ms / 1000)):
                    return int(await self._release[node](keys=[self.key], args=[attempt.value]))

            except NETWORK_ERRORS:
                return 0
            except redis_errors.ResponseError:
                return 0

        return sum(await asyncio.gather(*(one(node) for node in self.clients)))
