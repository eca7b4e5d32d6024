"""Persistent recursive watches (ZooKeeper 3.6+ ``addWatch``) on top of kazoo 2.11.

kazoo 2.11 knows only one-shot watches: its connection pops a path's watchers
from ``client._data_watchers`` / ``client._child_watchers`` when a notification
for that path arrives, so every later change goes unseen until someone reads
the znode again. ZooKeeper 3.6 added ``addWatch`` (opcode 106; the request is
the path and a mode, ``PERSISTENT = 0`` or ``PERSISTENT_RECURSIVE = 1``): the
watch stays armed, and a recursive one fires NodeCreated, NodeDeleted and
NodeDataChanged for the path and every descendant, naming the descendant —
but never NodeChildrenChanged. kazoo's PR #715 (python-zk/kazoo, open) and
the copy Zuul vendors add it by keeping persistent watchers in dicts of their
own that the connection reads with ``get`` (never ``pop``), looking a
recursive watcher up by every prefix of the notified path.

This module does the same on the installed kazoo, without touching its
files: :class:`PersistentWatchClient` is a ``KazooClient`` whose connection
handler is our subclass. Its ``_read_watch_event`` first lets kazoo's own
code serve the one-shot watchers (the notification is parsed from the same
buffer twice, which is cheap), then hands the event to every persistent
watcher registered on the path or, for recursive ones, on an ancestor. The
server sends one notification per connection per change, however many of our
watches match it, so dispatching it to both kinds is right.

Our :class:`AddWatch` request has no ``watcher`` attribute on purpose: kazoo's
``_read_response`` would file such a watcher among its one-shot data watchers
and drop it after the first event on the exact path.

Error handling
--------------
- A server older than 3.6 does not know opcode 106: it answers
  ``UnimplementedError`` (and closes the connection); the caller should fall
  back to one-shot watches. Any other error is raised as kazoo raises it.
- kazoo sends no ``SetWatches`` on reconnect (on SUSPENDED its
  ``_reset_watchers`` just drops the one-shot watchers with a NONE event), and
  a ZooKeeper server forgets a connection's watches when the connection
  closes. So a persistent watch lives exactly as long as one TCP connection:
  the caller must add it again after every CONNECTED — same session or new —
  and re-read what it watches, since changes in between fired nowhere. We keep
  the callbacks registered across reconnects (re-adding the same callback is
  idempotent here and on the server); :meth:`remove_persistent` forgets them.
- Callbacks run on kazoo's callback thread, like every kazoo watcher.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.serialization import Watch, int_struct, write_string
from kazoo.protocol.states import EVENT_TYPE_MAP, Callback, WatchedEvent

Watcher = Callable[[WatchedEvent], None]


class AddWatchMode(IntEnum):
    PERSISTENT = 0
    """Fires for every change of the path itself (children changes included)."""
    PERSISTENT_RECURSIVE = 1
    """Fires for created, deleted and changed znodes at the path and below it."""


class AddWatch:
    """The ``addWatch`` request as kazoo's connection sends it (``type``, ``serialize``)."""

    type = 106
    __slots__ = ("mode", "path")

    def __init__(self, path: str, mode: AddWatchMode) -> None:
        self.path = path
        self.mode = mode

    def serialize(self) -> bytes:
        mode: bytes = int_struct.pack(int(self.mode))
        return bytes(write_string(self.path)) + mode

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> None:
        return None  # the reply is the header alone

    def __repr__(self) -> str:
        return f"AddWatch(path={self.path!r}, mode={self.mode.name})"


class _Connection(ConnectionHandler):  # type: ignore[misc]
    client: PersistentWatchClient

    def _read_watch_event(self, buffer: bytes, offset: int) -> None:
        super()._read_watch_event(buffer, offset)  # kazoo's one-shot watchers, as ever
        client = self.client
        watch, _ = Watch.deserialize(buffer, offset)
        if watch.type not in EVENT_TYPE_MAP or client._stopped.is_set():
            return
        watchers = client._persistent_for(watch.path)
        if not watchers:
            return
        event = WatchedEvent(EVENT_TYPE_MAP[watch.type], client._state, client.unchroot(watch.path))
        for watcher in watchers:
            client.handler.dispatch_callback(Callback("watch", watcher, (event,)))


class PersistentWatchClient(KazooClient):  # type: ignore[misc]
    """A ``KazooClient`` that can also add persistent (recursive) watches."""

    _connection: ConnectionHandler

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._persistent: dict[tuple[str, AddWatchMode], set[Watcher]] = {}
        """Full (chrooted) path and mode -> callbacks. Read by kazoo's connection thread;
        replaced, never mutated in place, so that thread never sees it change mid-read."""
        old = self._connection
        self._connection = _Connection(
            self, old.retry_sleeper, logger=old.logger, sasl_options=old.sasl_options
        )

    def add_watch_async(self, path: str, watcher: Watcher, mode: AddWatchMode) -> Any:
        """Send ``addWatch``; returns kazoo's ``IAsyncResult`` (None, or the server's error)."""
        full = self._full_path(path)
        key = (full, mode)
        self._persistent = {**self._persistent, key: {*self._persistent.get(key, ()), watcher}}
        result = self.handler.async_result()
        self._call(AddWatch(full, mode), result)
        return result

    def remove_persistent(self, path: str, mode: AddWatchMode) -> None:
        """Stop dispatching to the watchers of ``path`` (the server's watch stays until the
        connection closes: ZooKeeper's ``removeWatches`` is not needed for a collector)."""
        self._persistent = {k: v for k, v in self._persistent.items() if k != (self._full_path(path), mode)}

    def _full_path(self, path: str) -> str:
        chroot: str = self.chroot or ""
        if not chroot:
            return path
        return chroot if path == "/" else chroot + path

    def _persistent_for(self, path: str) -> list[Watcher]:
        """Watchers of a notified (full) path: persistent ones on it, recursive ones on
        it or any ancestor."""
        found: list[Watcher] = []
        for (root, mode), watchers in self._persistent.items():
            if root == path or (
                mode is AddWatchMode.PERSISTENT_RECURSIVE
                and (root == "/" or path.startswith(root.rstrip("/") + "/"))
            ):
                found.extend(watchers)
        return found
