"""Counting keys past a budget, by prefix, without keeping them.

Algorithm
---------
Keeping every key of a million-key cache (or a million live sessions) would
cost the observer a gigabyte, so past a node's budget for a family — or for
the keys no family recognised — keys are not kept one by one. Which keys
exist is then only known by walking the keyspace, so the counts are a
*census*: each scan of the node counts every key of the family it reads
under its prefix (type, TTL bucket, string bytes, a few example names) into
a fresh tally; when the scan ends that tally becomes what the screens show,
stamped with the time. Between scans the keyspace notifications of
summarised keys are counted as writes and removals "since the count" — we
cannot tell a new key from an overwrite without remembering every key.

SCAN may return a key twice (while the server rehashes) and a key written and
deleted between two scans is never counted: the counts are a census, and the
screens say when it was taken. Only a master's keys are counted (a replica
holds the same keys).

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

    def __init__(self, node: str, max_prefixes: int, clock: Callable[[], int], family: str = "key") -> None:
        self.node = node
        self.family = family
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
        self._totals = [0, 0]
        """Keys in the count and in the running tally (kept as they grow: asked every flush)."""
        self._shown: dict[str, KeyPrefix] = {}
        self._changed: set[str] = set()

    def _slot(self, prefix: str, table: dict[str, _Tally] | dict[str, list[int]]) -> str:
        return prefix if prefix in table or len(table) < self._max else OTHER

    def scan_started(self) -> None:
        self.counting = True
        self._tally = {}
        self._totals[1] = 0

    def counted(self, rec: KeyRecord) -> None:
        """A key the scan read that no family claims."""
        prefix = self._slot(prefix_of(rec.key), self._tally)
        tally = self._tally.get(prefix)
        if tally is None:
            tally = self._tally[prefix] = _Tally()
        tally.add(rec)
        self._totals[1] += 1
        if not self.counted_once:  # before the first count ends, show it growing
            self._changed.add(prefix)

    def scan_ended(self) -> None:
        self._changed.update(self._count, self._tally)
        self._count, self._tally = self._tally, {}
        self._totals = [self._totals[1], 0]
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

    def holds(self, prefix: str) -> bool:
        return prefix in self._count or prefix in self._tally

    @property
    def total(self) -> int:
        """Keys counted (by the last complete scan, or so far by the first)."""
        return self._totals[0] if self.counted_once else self._totals[1]

    def _entity(self, prefix: str) -> KeyPrefix | None:
        tally = (self._count if self.counted_once else self._tally).get(prefix)
        writes, removals = self._since.get(prefix, (0, 0))
        if tally is None and not (writes or removals):
            return None
        tally = tally or _Tally()
        return KeyPrefix(
            id=f"redis:{self.node}:{self.family}:{prefix}",
            node=self.node,
            family=self.family,
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


class Budgets:
    """How many keys of each family each node lists one by one, and the census of the rest.

    Unrecognised keys are listed up to ``raw_keys`` per node; every family's keys up to
    ``family_keys`` (a million live sessions is normal, and would cost the observer
    gigabytes). A key that feeds an entity already listed is always kept (a session's
    second key joins its hash). Past a budget the keys are counted by prefix, per family;
    a replica lists a key beside its master's copy, or while its master has room.
    """

    def __init__(
        self,
        raw_kind: str,
        raw_keys: int,
        family_keys: int,
        max_prefixes: int,
        clock: Callable[[], int],
        log: Callable[[str, str], None],
    ) -> None:
        self._raw = raw_kind
        self._budget = {raw_kind: raw_keys}
        self._family_keys = family_keys
        self._max = max_prefixes
        self._clock = clock
        self._log = log
        self._kept: dict[tuple[str, str], int] = {}
        self._census: dict[tuple[str, str], NodeCensus] = {}
        self._summarising: set[tuple[str, str]] = set()
        self._scanning: set[str] = set()

    def budget(self, kind: str) -> int:
        return self._budget.get(kind, self._family_keys)

    def room(self, node: str, kind: str) -> bool:
        """Does this node still list every key of this family? (Then so do its replicas,
        whichever of the two reads a key first.)"""
        return (node, kind) not in self._summarising and self._kept.get((node, kind), 0) < self.budget(kind)

    def _census_of(self, node: str, kind: str) -> NodeCensus:
        census = self._census.get((node, kind))
        if census is None:
            census = self._census[node, kind] = NodeCensus(node, self._max, self._clock, kind)
            if node in self._scanning:
                census.scan_started()
        return census

    def keep(self, rec: KeyRecord, kind: str, master: bool, joins: bool) -> bool:
        """Is this key listed (True) or only counted under its prefix? ``master``: the
        node is no replica; ``joins``: the entity it feeds is already listed."""
        if master and rec.cause == "scan":  # listed or not, every key is in the count
            self._census_of(rec.node, kind).counted(rec)
        if joins or not master:
            return joins
        if self._kept.get((rec.node, kind), 0) < self.budget(kind):
            return True
        if (rec.node, kind) not in self._summarising:
            self._summarising.add((rec.node, kind))
            what = "unrecognised keys" if kind == self._raw else f"{kind} keys"
            setting = "redis.raw_keys" if kind == self._raw else "redis.family_keys"
            self._log(
                rec.node,
                f"more than {self.budget(kind):,} {what}: the rest are summarised by prefix "
                f"(raise {setting} in the config to list more)",
            )
        if rec.cause != "scan":
            self._census_of(rec.node, kind).seen(rec.key, removed=False)
        return False

    def placed(self, node: str, old_kind: str | None, new_kind: str | None) -> None:
        """A listed key changed family (``None``: it was not listed / is no longer)."""
        if old_kind is not None:
            self._kept[node, old_kind] = self._kept.get((node, old_kind), 0) - 1
        if new_kind is not None:
            self._kept[node, new_kind] = self._kept.get((node, new_kind), 0) + 1

    def removed(self, node: str, key: str) -> None:
        """A key we did not list went: a removal under the census that counts its prefix."""
        kinds = [k for n, k in self._summarising if n == node]
        if not kinds:
            return
        prefix = prefix_of(key)
        kind = next((k for k in kinds if self._census_of(node, k).holds(prefix)), None)
        self._census_of(node, kind or kinds[0]).seen(key, removed=True)

    def scan_started(self, node: str) -> None:
        self._scanning.add(node)
        for (n, _), census in self._census.items():
            if n == node:
                census.scan_started()

    def scan_ended(self, node: str) -> None:
        self._scanning.discard(node)
        for (n, _), census in self._census.items():
            if n == node:
                census.scan_ended()

    def summarising(self, node: str) -> bool:
        return any(n == node for n, _ in self._summarising)

    def summarised(self, node: str) -> int:
        """Keys counted on this node but not listed."""
        return sum(
            max(0, self._census_of(n, k).total - self._kept.get((n, k), 0))
            for n, k in self._summarising
            if n == node
        )

    def take_changes(self) -> tuple[list[KeyPrefix], list[str]]:
        upserts: list[KeyPrefix] = []
        gone: list[str] = []
        for node, kind in self._summarising:
            more, less = self._census_of(node, kind).take_changes()
            upserts += more
            gone += less
        return upserts, gone
