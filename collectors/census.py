"""Counting the keys nobody recognised, by prefix, without keeping them.

Algorithm
---------
Keeping every key of a million-key cache would cost the observer a gigabyte,
so past a node's raw-key budget the keys no family recognised are not kept
one by one. Which keys exist is then only known by walking the keyspace, so
the counts are a *census*: each scan of the node counts every unrecognised
key it reads under its prefix (type, TTL bucket, string bytes, a few example
names) into a fresh tally; when the scan ends that tally becomes what the
screens show, stamped with the time. Between scans the keyspace notifications
of summarised keys are counted as writes and removals "since the count" —
we cannot tell a new key from an overwrite without remembering every key.

SCAN may return a key twice (while the server rehashes) and a key written
and deleted between two scans is never counted: the counts are a census,
and the screens say when it was taken. Only a master's keys are counted (a
replica holds the same keys).

Nothing here does I/O; :class:`collectors.state.State` feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.families.prefixes import TTL_BUCKETS, KeyPrefix
from collectors.records import KeyRecord

EXAMPLES = 3
OTHER = "(other)"
NO_SEPARATOR = "(no separator)"
SEPARATORS = re.compile(r"[:/|]")
VARIABLE = re.compile(r"\d|^[0-9a-fA-F-]{16,}$|^.{25,}$")
"""A segment that names one thing rather than a kind of thing (an id, a hash, a uuid)."""


def prefix_of(key: str) -> str:
    """The leading segments of a key up to a separator: ``cache:user:42`` -> ``cache:user:``.

    The first segment always counts; the second too when neither looks like an id
    and something follows it. A key with no separator falls under one shared bucket.
    """
    parts = SEPARATORS.split(key, maxsplit=2)
    if len(parts) == 1:
        return NO_SEPARATOR
    seps: list[str] = SEPARATORS.findall(key)
    prefix: str = parts[0] + seps[0]
    if len(parts) == 3 and parts[1] and not VARIABLE.search(parts[0]) and not VARIABLE.search(parts[1]):
        prefix += parts[1] + seps[1]
    return prefix


def ttl_bucket(ttl_ms: int | None) -> str:
    if ttl_ms is None:
        return TTL_BUCKETS[0]
    for limit, name in ((60_000, "<1m"), (3_600_000, "<1h"), (86_400_000, "<1d")):
        if ttl_ms < limit:
            return name
    return TTL_BUCKETS[-1]


@dataclass
class _Tally:
    keys: int = 0
    types: dict[str, int] = field(default_factory=dict)
    ttls: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, rec: KeyRecord) -> None:
        self.keys += 1
        self.types[rec.type] = self.types.get(rec.type, 0) + 1
        bucket = ttl_bucket(rec.ttl_ms)
        self.ttls[bucket] = self.ttls.get(bucket, 0) + 1
        if rec.type == "string":
            self.bytes += rec.size
        if len(self.examples) < EXAMPLES:
            self.examples.append(rec.key)


class NodeCensus:
    """The census of one master: the published count, the running scan's tally, and
    the writes and removals seen since the count."""

    def __init__(self, node: str, max_prefixes: int, clock: Callable[[], int]) -> None:
        self.node = node
        self._max = max_prefixes
        self._clock = clock
        self.counting = False
        self.counted_once = False
        self._count: dict[str, _Tally] = {}
        """The last complete scan's tally (what the screens show)."""
        self._tally: dict[str, _Tally] = {}
        """The running scan's tally."""
        self._since: dict[str, list[int]] = {}
        """prefix -> [writes, removals] since the count."""
        self._as_of = 0
        self._shown: dict[str, KeyPrefix] = {}
        self._changed: set[str] = set()

    def _slot(self, prefix: str, table: dict[str, _Tally] | dict[str, list[int]]) -> str:
        return prefix if prefix in table or len(table) < self._max else OTHER

    def scan_started(self) -> None:
        self.counting = True
        self._tally = {}

    def counted(self, rec: KeyRecord) -> None:
        """A key the scan read that no family claims."""
        prefix = self._slot(prefix_of(rec.key), self._tally)
        tally = self._tally.get(prefix)
        if tally is None:
            tally = self._tally[prefix] = _Tally()
        tally.add(rec)
        if not self.counted_once:  # before the first count ends, show it growing
            self._changed.add(prefix)

    def scan_ended(self) -> None:
        self._changed.update(self._count, self._tally)
        self._count, self._tally = self._tally, {}
        self._since = {}
        self._as_of = self._clock()
        self.counting = False
        self.counted_once = True

    def seen(self, key: str, removed: bool) -> None:
        """A summarised key was written (or removed) after the count."""
        prefix = self._slot(prefix_of(key), self._since)
        since = self._since.setdefault(prefix, [0, 0])
        since[1 if removed else 0] += 1
        self._changed.add(prefix)

    def take_changes(self) -> tuple[list[KeyPrefix], list[str]]:
        """Prefix entities to announce, and ids of those that are gone."""
        upserts: list[KeyPrefix] = []
        gone: list[str] = []
        for prefix in self._changed:
            entity = self._entity(prefix)
            old = self._shown.get(prefix)
            if entity is None:
                if old is not None:
                    del self._shown[prefix]
                    gone.append(old.id)
            elif entity != old:
                self._shown[prefix] = entity
                upserts.append(entity)
        self._changed.clear()
        return upserts, gone

    @property
    def total(self) -> int:
        """Keys counted (by the last complete scan, or so far by the first)."""
        return sum(t.keys for t in (self._count if self.counted_once else self._tally).values())

    def _entity(self, prefix: str) -> KeyPrefix | None:
        tally = (self._count if self.counted_once else self._tally).get(prefix)
        writes, removals = self._since.get(prefix, (0, 0))
        if tally is None and not (writes or removals):
            return None
        tally = tally or _Tally()
        return KeyPrefix(
            id=f"redis:{self.node}:{prefix}",
            node=self.node,
            prefix=prefix,
            keys=tally.keys,
            types=dict(tally.types),
            ttls=dict(tally.ttls),
            bytes=tally.bytes,
            examples=tuple(tally.examples),
            as_of_ms=self._as_of,
            writes=writes,
            removals=removals,
        )
