"""How much a watch may cost the watched servers and us, set from the config.

A production Redis holds millions of keys that have nothing to do with
coordination. What no family recognises is kept individually up to
``raw_keys`` per node and summarised by key prefix beyond that; each family's
keys likewise, up to a budget big enough for any coordination state but a
million live sessions. Scans read at most ``scan_rate`` keys a second, so a
big keyspace is walked a page at a time, never in one stop-the-world read.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    scan_interval_s: float = 2.0
    """How often to scan when notifications are off (or paused)."""
    scan_rate: int = 25_000
    """Keys read back per second by a scan, per node."""
    scan_count: int = 500
    """The COUNT hint of each SCAN (keys per page)."""
    raw_keys: int = 1_000
    """Unrecognised keys listed one by one, per node; the rest are summarised by prefix."""
    family_keys: int = 20_000
    """Keys of one family (sessions, marks, locks...) listed one by one, per node; the rest
    are summarised by prefix like unrecognised keys (a million live sessions is normal)."""
    prefixes: int = 500
    """Prefix summaries per node; keys under further prefixes are counted as ``(other)``."""
    census_interval_s: float = 300.0
    """How often a node whose keys are summarised is rescanned to recount them."""
    dirty_keys: int = 100_000
    """Keys notified but not read back yet, at most. Past it (a burst of writes faster than
    we read back: 500k SET/s against 40k reads/s) we only count notifications until the
    burst ends, then resync by a scan: the queue would otherwise hold every key written."""
    sub_buffer_bytes: int = 8 * MIB
    """Our subscriber's output buffer on the server beyond which we stop subscribing and
    scan instead (Redis's default pub/sub limit disconnects at 32 MiB)."""
    pause_s: float = 30.0
    """How long to scan instead of subscribing after the buffer grew past the limit."""
