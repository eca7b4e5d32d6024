"""Recognisers: pure functions from what a store holds to what it means.

One module per family of library layouts (our own, sessions, Redis locks,
ZooKeeper locks, idempotency marks). Each family of entities
(:mod:`collectors.families`) says which recognisers feed it and in which
order they are asked; the first that claims a key wins, and a key nobody
claims is listed raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LayoutConfig:
    """What users can add in the config file (``[layouts]``)."""

    lock_patterns: tuple[str, ...] = ("*lock*",)
    """Glob patterns: a string key matching one is a lock whatever its value."""
    token_heuristics: bool = True
    """Treat any token-like string with a TTL as a lock."""
    session_patterns: tuple[str, ...] = ("sess:*",)
    """Glob patterns: a string or hash matching one is a session whatever its value or TTL
    (connect-redis when it is JSON with express-session's cookie)."""
    mark_patterns: tuple[str, ...] = ()
    """Glob patterns of idempotency records (a key matching one is a mark)."""
    queue_patterns: tuple[str, ...] = ("*queue*", "*jobs*", "*tasks*")
    """Glob patterns: a list whose name matches one is a queue (a stream is one when it
    has consumer groups, whatever its name)."""
    zk_lock_patterns: tuple[str, ...] = ()
    """Regexes for lock children in ZooKeeper; each needs a ``(?P<seq>...)`` group."""

    def compiled_zk_patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.zk_lock_patterns)
