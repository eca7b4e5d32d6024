"""coordscope's ZooKeeper lock: ephemeral sequential contenders, each watching its predecessor.

Algorithm (the seed's, as kazoo and Curator implement it):

1. create ``/coordscope/locks/<name>/<owner>__lock__<seq>`` — ephemeral (it goes
   with our session) and sequential (the server appends a 10-digit counter);
2. list the children; if ours has the lowest sequence number, we hold the lock;
3. otherwise set a watch on the child just before ours and wait for it to go
   (``watch="predecessor"``: one waiter wakes per release, in order), or set a
   children watch on the parent (``watch="parent"``: every release wakes every
   waiter — the herd effect), then go back to 2.

Release deletes our node. If our session ends (the process died, or the
session expired while we were paused), ZooKeeper deletes the node for us and
the next contender wakes — but a holder that was paused does not know it lost
the lock until it hears from ZooKeeper again, so writes are fenced with the
node's ``czxid`` (the transaction id that created it: larger for every later
holder).

Error handling
--------------
A lost connection is not a lost lock: while the session lives, our node stays
in the queue, so on ``ConnectionLoss`` we wait to be connected again and
carry on from step 2. It is possible for our ``create`` to succeed on the
server but the reply to be lost with the connection; our node's name starts
with our owner's name (one contender per owner), so after reconnecting we look
for it before creating another — a second node would be an orphan that blocks
the queue for as long as our session lives (kazoo#732). If the session
expired, our node is gone and we queue again. Giving up (timeout,
cancellation) deletes our node, retrying until the server confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)

from collectors.kazoo_bridge import KazooBridge
from collectors.layouts.coordscope import ZNODE_ROOT

SUFFIX = "__lock__"
TRANSIENT = (ConnectionLoss, ConnectionClosedError, OperationTimeoutError)


def lock_path(name: str) -> str:
    return f"{ZNODE_ROOT}/locks/{name}"


def _seq(child: str) -> int:
    return int(child[-10:]) if child[-10:].isdigit() else -1


class _Requeue(Exception):
    """Our node is gone (the session expired): queue again."""


@dataclass(frozen=True)
class ZkHold:
    node: str
    """Our contender's full path."""
    seq: int
    czxid: int
    """The fencing token: the zxid that created our node."""
    wakeups: int
    """Watch notifications we received while waiting."""
    requests: int
    """Requests sent to ZooKeeper for this acquisition."""


class ZkLock:
    def __init__(
        self, client: KazooClient, bridge: KazooBridge, name: str, owner: str, watch: str = "predecessor"
    ) -> None:
        if "/" in owner or SUFFIX in owner:
            raise ValueError(f"owner {owner!r} cannot be part of a znode name")
        self.client = client
        self.bridge = bridge
        self.path = lock_path(name)
        self.owner = owner
        self.watch = watch
        self.node: str | None = None
        self._czxid: int | None = None
        self._uncertain = False
        """A create failed in flight: the server may have made our node anyway."""
        self.on_wait: Callable[[str], None] | None = None
        """Told the node we start watching (for narration)."""
        self._parent_ready = False
        self._requests = 0
        self._wakeups = 0
        self._connected = asyncio.Event()
        if client.connected:
            self._connected.set()
        client.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:  # on a kazoo thread
        self.bridge.call_soon(self._connected.set if state == KazooState.CONNECTED else self._connected.clear)

    async def _reconnected(self) -> None:
        # The failed request may reach us before the state change does: give kazoo a
        # moment to report SUSPENDED, then wait for CONNECTED.
        await asyncio.sleep(0.05)
        await self._connected.wait()

    async def _call(self, result: Any) -> Any:
        self._requests += 1
        return await self.bridge.result(result)

    async def acquire(self, timeout: float = 30.0) -> ZkHold:
        self._requests = self._wakeups = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        return await self._attempt()
                    except TRANSIENT:
                        self._uncertain = self.node is None
                        await self._reconnected()
                    except (SessionExpiredError, _Requeue):
                        self.node = None  # it went with the session: queue again
                        await self._connected.wait()
        except BaseException:
            await self.abandon()
            raise

    async def _attempt(self) -> ZkHold:
        if not self._parent_ready:
            with contextlib.suppress(NodeExistsError):
                await self._call(self.client.ensure_path_async(self.path))
            self._parent_ready = True
        if self.node is None and self._uncertain:
            self.node, self._czxid = await self._find_mine(), None
            self._uncertain = False
        created = None
        if self.node is None:
            # ZooKeeper runs a session's requests in order, so the listing sent right
            # behind the create already sees our node: one round trip, not two.
            created = self.client.create_async(
                f"{self.path}/{self.owner}{SUFFIX}",
                self.owner.encode(),
                ephemeral=True,
                sequence=True,
                include_data=True,
            )
        while True:
            woken = asyncio.Event()

            def wake(_: Any, woken: asyncio.Event = woken) -> None:  # on a kazoo thread
                self.bridge.call_soon(woken.set)

            listing = self.client.get_children_async(
                self.path, watch=wake if self.watch == "parent" else None
            )
            if created is not None:
                path, stat = await self._call(created)
                self.node, self._czxid, created = str(path), int(stat.czxid), None
            assert self.node is not None
            mine = self.node.rsplit("/", 1)[1]
            children = await self._call(listing)
            if mine not in children:
                raise _Requeue
            ahead = sorted((c for c in children if _seq(c) < _seq(mine)), key=_seq)
            if not ahead:
                if self._czxid is None:  # a node we found rather than created
                    found = await self._call(self.client.exists_async(self.node))
                    if found is None:
                        raise _Requeue
                    self._czxid = found.czxid
                return ZkHold(
                    node=self.node,
                    seq=_seq(mine),
                    czxid=self._czxid,
                    wakeups=self._wakeups,
                    requests=self._requests,
                )
            predecessor = ahead[-1]
            if self.on_wait is not None:
                self.on_wait(predecessor)
            if self.watch == "predecessor":
                there = await self._call(self.client.exists_async(f"{self.path}/{predecessor}", watch=wake))
                if there is None:
                    continue  # it went between our list and our watch
            await woken.wait()
            self._wakeups += 1

    async def _find_mine(self) -> str | None:
        """Our node from a create whose reply we never got, if the server made it."""
        children = await self._call(self.client.get_children_async(self.path))
        prefix = f"{self.owner}{SUFFIX}"
        found = sorted((c for c in children if c.startswith(prefix)), key=_seq)
        return f"{self.path}/{found[0]}" if found else None

    async def release(self, patience_s: float = 30.0) -> bool:
        """Delete our node, retrying through disconnections: True when we deleted it,
        False when it was gone already (our session had expired)."""
        node, self.node = self.node, None
        if node is None:
            return False
        in_flight = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience_s):
                while True:
                    try:
                        await self._call(self.client.delete_async(node))
                        return True
                    except NoNodeError:
                        # gone: with our session, or by a delete of ours whose reply was lost
                        return in_flight
                    except SessionExpiredError:
                        return False
                    except KazooException:
                        in_flight = True
                        await self._reconnected()
        return False

    async def abandon(self) -> None:
        """Remove our contender after a failed or cancelled acquire (an orphaned node
        would block everyone queued behind it for as long as our session lives)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.release(patience_s=5.0)  # a cancel must not wait long for a lost server

    def close(self) -> None:
        self.client.remove_listener(self._on_state)


async def start_sessions(clients: dict[str, KazooClient], timeout_s: float = 15.0) -> None:
    """Connect every client (each its own session); ConnectionError when one cannot."""
    try:
        await asyncio.gather(*(asyncio.to_thread(c.start, timeout_s) for c in clients.values()))
    except Exception as exc:
        await close_sessions(clients)
        hosts = next(iter(clients.values())).hosts if clients else "?"
        raise ConnectionError(f"cannot connect to ZooKeeper at {hosts}: {exc}") from None


async def close_sessions(clients: dict[str, KazooClient]) -> None:
    """Close every session (their ephemeral nodes go with them). Listeners are removed
    first: a session we close on purpose is not a session lost."""

    def close(client: KazooClient) -> None:
        client.state_listeners.clear()
        with contextlib.suppress(Exception):
            client.stop()
            client.close()

    await asyncio.gather(*(asyncio.to_thread(close, c) for c in clients.values()))
