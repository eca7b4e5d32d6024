"""Recognisers: pure functions from what a store holds to what it means.

One module per family of layouts; :func:`recognise_key` asks them in order
(our own layout first, then sessions, then locks) and the first that claims
a key wins. A key nobody claims is listed raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collectors.layouts import coordscope, redis_locks, sessions, zk_locks
from collectors.layouts.facts import Fact, ZkLockFact
from collectors.records import KeyRecord, ZNodeRecord


@dataclass(frozen=True)
class LayoutConfig:
    """What users can add in the config file (``[layouts]``)."""

    lock_patterns: tuple[str, ...] = ("*lock*",)
    """Glob patterns: a string key matching one is a lock whatever its value."""
    token_heuristics: bool = True
    """Treat any token-like string with a TTL as a lock."""
    session_patterns: tuple[str, ...] = ("sess:*",)
    """Glob patterns of JSON-string sessions (connect-redis)."""
    zk_lock_patterns: tuple[str, ...] = ()
    """Regexes for lock children in ZooKeeper; each needs a ``(?P<seq>...)`` group."""

    def compiled_zk_patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.zk_lock_patterns)


def recognise_key(rec: KeyRecord, config: LayoutConfig = LayoutConfig()) -> Fact | None:
    return (
        coordscope.recognise(rec)
        or sessions.recognise(rec, config.session_patterns)
        or redis_locks.recognise(rec, config.lock_patterns, config.token_heuristics)
    )


def recognise_zk_lock(
    path: str, children: list[ZNodeRecord], config: LayoutConfig = LayoutConfig()
) -> ZkLockFact | None:
    return zk_locks.recognise(path, children, config.compiled_zk_patterns())
