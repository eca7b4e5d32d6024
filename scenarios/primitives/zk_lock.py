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
It is possible for our ``create`` to succeed on the server but the reply to be
lost with the connection; kazoo's retry would then create a second node. We
do not retry creates: a failed acquire removes whatever node it may have made
(matched by our owner prefix) before giving up. kazoo's threads only hand
completions and watch events to the loop (see ``collectors.kazoo_bridge``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from collectors.kazoo_bridge import KazooBridge
from collectors.layouts.coordscope import ZNODE_ROOT

SUFFIX = "__lock__"


def lock_path(name: str) -> str:
    return f"{ZNODE_ROOT}/locks/{name}"


def _seq(child: str) -> int:
    return int(child[-10:]) if child[-10:].isdigit() else -1


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
        self.on_wait: Callable[[str], None] | None = None
        """Told the node we start watching (for narration)."""

    async def _call(self, result: Any) -> Any:
        return await self.bridge.result(result)

    async def acquire(self, timeout: float = 30.0) -> ZkHold:
        requests = 0
        try:
            await self._call(self.client.ensure_path_async(self.path))
            requests += 1
        except NodeExistsError:
            pass
        path, stat = await self._call(
            self.client.create_async(
                f"{self.path}/{self.owner}{SUFFIX}",
                self.owner.encode(),
                ephemeral=True,
                sequence=True,
                include_data=True,
            )
        )
        requests += 1
        self.node = path
        mine = path.rsplit("/", 1)[1]
        wakeups = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    woken = asyncio.Event()

                    def wake(_: Any, woken: asyncio.Event = woken) -> None:
                        self.bridge.call_soon(woken.set)

                    parent_watch = wake if self.watch == "parent" else None
                    children = await self._call(self.client.get_children_async(self.path, watch=parent_watch))
                    requests += 1
                    ahead = sorted((c for c in children if _seq(c) < _seq(mine)), key=_seq)
                    if not ahead:
                        return ZkHold(
                            node=path, seq=_seq(mine), czxid=stat.czxid, wakeups=wakeups, requests=requests
                        )
                    predecessor = ahead[-1]
                    if self.on_wait is not None:
                        self.on_wait(predecessor)
                    if self.watch == "predecessor":
                        exists = await self._call(
                            self.client.exists_async(f"{self.path}/{predecessor}", watch=wake)
                        )
                        requests += 1
                        if exists is None:
                            continue  # it went between our list and our watch
                    await woken.wait()
                    wakeups += 1
        except BaseException:
            await self.abandon()
            raise

    async def release(self) -> bool:
        """Delete our node: True when it was still there (our session kept it)."""
        node, self.node = self.node, None
        if node is None:
            return False
        try:
            await self._call(self.client.delete_async(node))
        except NoNodeError:
            return False
        return True

    async def abandon(self) -> None:
        """Remove our contender after a failed or cancelled acquire (best effort)."""
        with contextlib.suppress(KazooException, asyncio.CancelledError):
            await self.release()


async def expire_session(client: KazooClient, bridge: KazooBridge, hosts: str) -> None:
    """Expire ``client``'s session from outside, as a long pause or partition would:
    a second client joins the same session and closes it (kazoo's own test trick)."""
    session_id, password = client.client_id

    def steal() -> None:
        thief = KazooClient(hosts=hosts, client_id=(session_id, password))
        try:
            thief.start(timeout=10)
        finally:
            thief.stop()
            thief.close()

    await asyncio.to_thread(steal)
