"""What a collector read from a store, before any recogniser looked at it.

These are observations, not entities: one per Redis key per node, one per
znode. :mod:`collectors.state` feeds them to the recognisers in
:mod:`collectors.layouts` and assembles the entities viewers see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

Store = Literal["redis", "zookeeper", "postgres"]


def display(raw: bytes) -> str:
    """A key or value as text: UTF-8 where it is, ``\\xNN`` escapes where it is not.

    The result is still untrusted text (it may hold markup or control
    characters); viewers escape it for their medium.
    """
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class StreamConsumer:
    """One consumer of a stream's group, as ``XINFO CONSUMERS`` said."""

    name: str
    pending: int
    idle_since_ms: int
    """When it last read (or tried to), wall clock: the read's time minus its idle ms."""


@dataclass(frozen=True)
class StreamGroup:
    """One consumer group of a stream, as ``XINFO GROUPS``/``CONSUMERS``/``XPENDING`` said."""

    name: str
    pending: int
    last_delivered: str
    consumers: tuple[StreamConsumer, ...] = ()
    lag: int | None = None
    """Entries not delivered to the group yet (None: Redis cannot tell, e.g. after XDEL)."""
    entries_read: int | None = None
    oldest_pending: str | None = None
    """The id of the oldest entry delivered and not acknowledged."""
    oldest_since_ms: int | None = None
    """When that entry was last delivered (wall clock): its idle time is the age of this."""
    oldest_deliveries: int = 0


@dataclass(frozen=True)
class KeyRecord:
    """One Redis key as read back from one node, after a notification or a scan."""

    node: str
    raw_key: bytes
    type: str
    """string | hash | list | set | zset | stream."""
    ttl_ms: int | None
    """Remaining time to live when read; None when the key has no TTL."""
    read_at_ms: int
    value: bytes | None = None
    """A string's value (its first ``MAX_VALUE`` bytes)."""
    fields: dict[bytes, bytes] = field(default_factory=dict)
    """A hash's fields (up to a budget)."""
    items: tuple[bytes, ...] = ()
    """The first members of a list, set or sorted set."""
    entries: tuple[tuple[bytes, dict[bytes, bytes]], ...] = ()
    """Stream entries read since the previous read of this key (id, fields)."""
    groups: tuple[StreamGroup, ...] = ()
    """A stream's consumer groups (read with the stream, and re-read periodically:
    deliveries and acknowledgements send no notification)."""
    size: int = 0
    """Length of the value: bytes of a string, fields of a hash, members, entries."""
    truncated: bool = False
    cause: str = ""
    """The keyspace event that made us read it (``set``, ``expire``...), or ``scan``."""

    @cached_property
    def key(self) -> str:
        """The name as text (every recogniser asks: decoded once)."""
        return display(self.raw_key)

    @property
    def expires_at_ms(self) -> int | None:
        return None if self.ttl_ms is None else self.read_at_ms + self.ttl_ms


@dataclass(frozen=True)
class ZNodeRecord:
    """One znode as read back from ZooKeeper, with its children's names."""

    path: str
    data: bytes
    children: tuple[str, ...]
    czxid: int
    mzxid: int
    version: int
    ephemeral_owner: int
    ctime_ms: int
    mtime_ms: int
    num_children: int
    read_at_ms: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        head = self.path.rsplit("/", 1)[0]
        return head or "/"

    @property
    def ephemeral(self) -> bool:
        return self.ephemeral_owner != 0
