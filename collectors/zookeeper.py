"""Watch a ZooKeeper ensemble's tree with kazoo.

Algorithm
---------
The tree under each root (``/`` by default, skipping ``/zookeeper``) is read
breadth-first: every znode's data, stat (its ``version`` is shown) and
children; new children are read the same way, vanished ones dropped with
their subtree. How changes reach us, once read:

- **Persistent recursive watch** (ZooKeeper 3.6+ ``addWatch``, see
  :mod:`collectors.zk_watch`): one watch per root stays armed and fires for
  every change of every descendant, naming it. Each notification is counted
  in ``events`` and marks its path dirty; NodeCreated and NodeDeleted also
  mark the parent, since a recursive watch sends no NodeChildrenChanged and
  the parent's list of children is what groups a lock's contenders. Reads
  set no watch. Dirty paths coalesce (latest state wins) but every change
  is counted: measured, all of 2,000 rapid sets of one znode were received.
- **One-shot watches** (older servers, or ``persistent_watches = false``):
  every read registers a data and a children watch on the znode; when one
  fires we read the znode again, which re-arms both. Changes between a watch
  firing and our re-read are never notified (measured with
  ``bench/zk_watch.py``: 99% of 2,000 rapid sets of one znode and about half of
  2,000 rapid child changes), but the latest state is what we show.

kazoo runs its own threads. Its watch and state callbacks do one thing:
hand the event to the asyncio loop with ``call_soon_threadsafe``. Requests
go out with kazoo's ``*_async`` calls, whose completions are handed back
the same way; nothing else crosses threads. Each server's role (leader,
follower, standalone) is polled with ``srvr`` (:mod:`collectors.zk_roles`).

Error handling
--------------
SUSPENDED (connection lost, session maybe alive) and LOST (session expired:
every watch and ephemeral node of ours is gone) are shown on the node, not
hidden. A server forgets a connection's watches when it closes and kazoo
re-sends none, so after every CONNECTED — same session or new — the
persistent watches are added again, and only then is the whole watched tree
re-read (a change in between fired nowhere; the re-read finds it). Every
reconnect after the first counts as a gap. If ``addWatch`` fails with a
server error (``UnimplementedError`` before 3.6) or gets no answer, the
collector falls back to one-shot watches for good and says so in ``feed``.
The tree is watched within a znode budget; past it new znodes are not
followed and the node says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat

from collectors.families.nodes import Node
from collectors.kazoo_bridge import KazooBridge
from collectors.records import ZNodeRecord
from collectors.state import State, now_ms
from collectors.targets import ZkTarget
from collectors.zk_roles import ServerRole, srvr
from collectors.zk_watch import AddWatchMode, PersistentWatchClient

MAX_DATA = 4096
SKIP = ("/zookeeper",)
PERSISTENT_FEED = "persistent recursive watch (addWatch)"
ONE_SHOT_FEED = "watches (one-shot, re-armed on every read)"
ADD_WATCH_TIMEOUT_S = 10.0
CONNECTION_TROUBLE = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)
"""Errors of a request cut short by the connection: the next CONNECTED retries it."""


class ZkCollector:
    def __init__(self, target: ZkTarget, state: State, wake: Callable[[], None]) -> None:
        self.target = target
        self._state = state
        self._wake = wake
        self._bridge: KazooBridge | None = None
        self._client: PersistentWatchClient | None = None
        self._dirty: dict[str, str] = {}
        self._dirty_event = asyncio.Event()
        self._connected = asyncio.Event()
        self._node = Node(
            id=target.id,
            store="zookeeper",
            address=target.hosts,
            role="ensemble",
            feed=ONE_SHOT_FEED,
        )
        self._persistent = target.persistent_watches
        """Still trying persistent watches (False once the server refused ``addWatch``)."""
        self._armed = False
        """Our persistent watches are set on the current connection: reads set none."""
        self._arming: asyncio.Task[None] | None = None
        self._session = ""
        self._roles: dict[str, ServerRole] = {}
        self._over_budget = False
        self._unreadable: set[str] = set()
        """Znodes whose ACL does not let us read them (said once each)."""
        self.events = 0
        self.coalesced = 0
        self.resyncs = 0
        self.synced = asyncio.Event()
        """Set once the watched tree has been read after the first connect."""

    # ------------------------------------------------------------------ kazoo thread side

    def _on_state(self, state: str) -> None:
        if self._bridge is not None:
            self._bridge.call_soon(self._state_changed, state)

    def _on_watch(self, event: WatchedEvent) -> None:
        if event.path and self._bridge is not None:  # session events come as states
            self._bridge.call_soon(self._notified, event.path, event.type, False)

    def _on_persistent(self, event: WatchedEvent) -> None:
        if event.path and self._bridge is not None:
            self._bridge.call_soon(self._notified, event.path, event.type, True)

    # ------------------------------------------------------------------ loop side

    async def run(self) -> None:
        self._bridge = KazooBridge(asyncio.get_running_loop())
        client = PersistentWatchClient(
            hosts=self.target.hosts,
            timeout=self.target.session_timeout_s,
            connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 2.0},
        )
        self._client = client
        client.add_listener(self._on_state)
        client.start_async()
        roles = asyncio.create_task(self._poll_roles(), name=f"roles {self.target.id}")
        try:
            while True:
                try:
                    await self._worker()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not silence the collector for good
                    self._state.log(
                        "error", self.target.id, f"collector error ({type(exc).__name__}: {exc}); resyncing"
                    )
                    await asyncio.sleep(0.5)
                    self._resync()
        finally:
            roles.cancel()
            if self._arming is not None:
                self._arming.cancel()
            self._client = None
            client.remove_listener(self._on_state)
            await asyncio.to_thread(_close, client)

    def _state_changed(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            session = self._client.client_id[0] if self._client and self._client.client_id else 0
            was = self._node.status
            self._session = f"session 0x{session:x}"
            self._node = replace(self._node, status="up", as_of_ms=now_ms(), detail=self._detail())
            self._state.log(
                "info", self.target.id, "connected" if was == "connecting" else f"reconnected after {was}"
            )
            self._connected.set()
            self._armed = False  # a new connection holds none of our watches
            if self._persistent:
                if self._arming is not None:
                    self._arming.cancel()
                self._arming = asyncio.get_running_loop().create_task(
                    self._arm(), name=f"addWatch {self.target.id}"
                )
            else:
                self._resync()
        elif state == KazooState.SUSPENDED:
            self._armed = False
            self._connected.clear()
            self._node = replace(
                self._node, status="suspended", detail="connection lost; the session may still be alive"
            )
            self._state.log("warn", self.target.id, "SUSPENDED: connection lost")
        elif state == KazooState.LOST:
            self._armed = False
            self._connected.clear()
            self._node = replace(
                self._node, status="lost", detail="session expired: its watches and ephemeral nodes are gone"
            )
            self._state.log("error", self.target.id, "LOST: session expired")
        self._publish_node()

    async def _arm(self) -> None:
        """Add one persistent recursive watch per root, then re-read the tree; fall back
        to one-shot watches for good if the server will not have them."""
        client, bridge = self._client, self._bridge
        assert client is not None and bridge is not None
        try:
            for root in self.target.roots:
                added = client.add_watch_async(root, self._on_persistent, AddWatchMode.PERSISTENT_RECURSIVE)
                await bridge.result(added, ADD_WATCH_TIMEOUT_S)
        except CONNECTION_TROUBLE:
            return  # the connection went while we asked: the next CONNECTED arms again
        except (KazooException, TimeoutError) as exc:
            why = f"{type(exc).__name__}" if isinstance(exc, KazooException) else "no answer"
            self._persistent = False
            for root in self.target.roots:
                client.remove_persistent(root, AddWatchMode.PERSISTENT_RECURSIVE)
            self._state.log(
                "warn", self.target.id, f"addWatch refused ({why}; ZooKeeper < 3.6?): using one-shot watches"
            )
            self._node = replace(self._node, feed=f"{ONE_SHOT_FEED}; addWatch refused: {why}")
        else:
            self._armed = True
            self._node = replace(self._node, feed=PERSISTENT_FEED)
        self._resync()
        self._publish_node()

    def _resync(self) -> None:
        """Re-read the whole watched tree (every reconnect after the first is a gap)."""
        self.resyncs += 1
        for path in self._state.znode_paths(self.target.id):
            self._dirty.setdefault(path, "resync")
        for root in self.target.roots:
            self._dirty.setdefault(root, "resync")
        self._dirty_event.set()

    def _notified(self, path: str, event_type: str, persistent: bool) -> None:
        """One watch notification: count it, and mark what it changed for reading."""
        if _skipped(path) or (self._armed and not persistent):
            # a one-shot watch left from before we armed: the server sent one notification
            # per change to this connection, and the persistent watcher got it too
            return
        self.events += 1
        known = self._state.record(self.target.id, path) is not None
        if known or len(self._state.znode_paths(self.target.id)) < self.target.budget:
            self._mark(path, str(event_type))
        elif event_type == EventType.CREATED:
            self._budget_reached()
        if self._armed and event_type in (EventType.CREATED, EventType.DELETED):
            parent = path.rsplit("/", 1)[0] or "/"
            # a recursive watch sends no NodeChildrenChanged: the parent's children moved
            if self._state.record(self.target.id, parent) is not None:
                self._dirty.setdefault(parent, f"child {str(event_type).lower()}")

    def _mark(self, path: str, cause: str) -> None:
        if path in self._dirty:
            self.coalesced += 1
        self._dirty[path] = cause
        self._dirty_event.set()

    async def _worker(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            await self._connected.wait()
            while self._dirty:
                batch = list(self._dirty.items())[:256]
                for path, _ in batch:
                    self._dirty.pop(path, None)
                try:
                    await asyncio.gather(*(self._refresh(path) for path, _ in batch))
                except KazooException as exc:
                    # Connection trouble. Requests sent before a reconnect can fail after
                    # the new session is already up, so only wait for the state listener
                    # when the client really is disconnected; otherwise just retry.
                    for path, cause in batch:
                        self._dirty.setdefault(path, cause)
                    self._node = replace(self._node, detail=f"read failed: {type(exc).__name__}")
                    self._publish_node()
                    if self._client is None or not self._client.connected:
                        self._connected.clear()
                    await asyncio.sleep(0.1)
                    self._dirty_event.set()
                    break
                self._publish_node()  # the counts moved: events, coalesced
            if not self._dirty and self._connected.is_set():
                self.synced.set()

    async def _refresh(self, path: str) -> None:
        """Read one znode (re-arming its watches); follow new children, drop lost ones."""
        if _skipped(path):
            return
        client = self._client
        assert client is not None
        watch = None if self._armed else self._on_watch
        try:
            data_result = client.get_async(path, watch=watch)
            children_result = client.get_children_async(path, watch=watch)
            assert self._bridge is not None
            data, stat = await self._bridge.result(data_result)
            children = await self._bridge.result(children_result)
        except NoNodeError:
            self._drop_subtree(path)
            return
        except NoAuthError:
            # an ACL that is not for us: it will not pass on a retry, so say so once and
            # go on with the rest of the tree (retrying it stalled every other read)
            if path not in self._unreadable:
                self._unreadable.add(path)
                self._state.log("warn", self.target.id, f"{path}: not readable by us (ACL); skipped")
            return
        before = self._state.record(self.target.id, path)
        self._state.apply_znode(self.target.id, _record(path, data, stat, children))
        known = set(before.children) if isinstance(before, ZNodeRecord) else set()
        prefix = path.rstrip("/") + "/"
        for name in known - set(children):
            self._drop_subtree(prefix + name)
        watched = len(self._state.znode_paths(self.target.id))
        for name in set(children) - known:
            child = prefix + name
            if self._state.record(self.target.id, child) is not None:
                continue
            if watched >= self.target.budget:
                self._budget_reached()
                break
            watched += 1
            self._dirty.setdefault(child, "new child")
            self._dirty_event.set()

    def _drop_subtree(self, path: str) -> None:
        inside = path.rstrip("/") + "/"
        for known in sorted(self._state.znode_paths(self.target.id), reverse=True):
            if known == path or known.startswith(inside):
                self._state.drop_znode(self.target.id, known)

    def _budget_reached(self) -> None:
        if not self._over_budget:
            self._over_budget = True
            self._state.log(
                "warn",
                self.target.id,
                f"znode budget of {self.target.budget} reached: newer znodes are not "
                "watched (raise zookeeper.budget in the config)",
            )
            feed = PERSISTENT_FEED if self._armed else ONE_SHOT_FEED
            self._node = replace(self._node, feed=f"{feed}; budget of {self.target.budget} znodes reached")
            self._publish_node()

    def _publish_node(self) -> None:
        as_of = now_ms() if self._node.status == "up" else self._node.as_of_ms
        self._node = replace(
            self._node,
            as_of_ms=as_of,
            events=self.events,
            coalesced=self.coalesced,
            gaps=max(0, self.resyncs - 1),
        )
        self._state.set_node(self._node)
        self._wake()

    # ------------------------------------------------------------------ server roles

    async def _poll_roles(self) -> None:
        """Ask every server of the connect string its role, every ``roles_interval_s``."""
        servers = self.target.servers
        ensemble = len(servers) > 1
        every = f"srvr every {self.target.roles_interval_s:g} s"
        while True:
            found = await asyncio.gather(*(srvr(host, port) for host, port in servers))
            for r in found:
                before = self._roles.get(r.address)
                if ensemble and before is not None and before.role != r.role:
                    level = "info" if r.up and r.role in ("leader", "follower", "observer") else "warn"
                    self._state.log(level, self.target.id, f"{r.address}: {before.role} -> {r.role}")
                self._roles[r.address] = r
                if ensemble:
                    self._publish_server(r, every)
            leaders = [r.address for r in found if r.role == "leader"]
            if ensemble:
                role = (
                    f"ensemble of {len(servers)}, leader {leaders[0]}" if leaders else "ensemble, no leader"
                )
            else:
                role = found[0].role if found[0].up else self._node.role
            detail = self._detail() if self._node.status == "up" else self._node.detail  # not hiding why
            if role != self._node.role or detail != self._node.detail:
                self._node = replace(self._node, role=role, detail=detail)
                self._publish_node()
            await asyncio.sleep(self.target.roles_interval_s)

    def _publish_server(self, r: ServerRole, every: str) -> None:
        node_id = f"{self.target.id}/{r.address}"
        old = self._state.node(node_id)
        self._state.set_node(
            Node(
                id=node_id,
                store="zookeeper",
                address=r.address,
                role=r.role if r.up else (old.role if old else "unknown"),
                status="up" if r.up else "down",
                feed=f"role by {every} (4lw)",
                as_of_ms=now_ms() if r.up else (old.as_of_ms if old else None),
                detail=r.detail or f"server of {self.target.id}",
            )
        )

    def _detail(self) -> str:
        """The session, and each server's role: ``session 0x…; 127.0.0.1:2181 leader, …``."""
        servers = ", ".join(f"{a} {r.role}" for a, r in self._roles.items())
        return f"{self._session}; {servers}" if self._session and servers else self._session or servers

    # ------------------------------------------------------------------ helpers for tests

    @property
    def client(self) -> KazooClient | None:
        return self._client

    @property
    def persistent(self) -> bool:
        """Are changes reaching us through persistent watches now?"""
        return self._armed


def _skipped(path: str) -> bool:
    return any(path == s or path.startswith(s + "/") for s in SKIP)


def _record(path: str, data: bytes | None, stat: ZnodeStat, children: list[str]) -> ZNodeRecord:
    return ZNodeRecord(
        path=path,
        data=(data or b"")[:MAX_DATA],
        children=tuple(sorted(children)),
        czxid=stat.czxid,
        mzxid=stat.mzxid,
        version=stat.version,
        ephemeral_owner=stat.ephemeralOwner,
        ctime_ms=stat.ctime,
        mtime_ms=stat.mtime,
        num_children=stat.numChildren,
        read_at_ms=now_ms(),
    )


def _close(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()
