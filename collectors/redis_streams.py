"""Reading a stream's consumer groups: who has what pending, and since when.

``XREADGROUP`` (a delivery, which creates a pending entry) and ``XACK`` send
no keyspace notification — only ``xadd``, ``xgroup-create``,
``xgroup-createconsumer`` and ``del`` do. So the groups are read with the
stream whenever a notification names it, and re-read every
``REFRESH_EVERY_S`` for the streams known to have groups (at most
``REFRESH_BATCH`` per cycle, taking turns), by the collector's health loop.

Two pipelined round trips for any number of streams: ``XINFO GROUPS`` of
each, then per group ``XINFO CONSUMERS`` (pending and idle ms per consumer)
and ``XPENDING key group - + 1`` (the oldest pending entry, its idle ms and
delivery count). Idle times are turned into wall-clock moments (the read's
time minus the idle) so that a quiet group reads the same every time and
viewers are sent nothing new.

Replies are RESP2 as hiredis gives them: ``XINFO`` answers a flat
``[name, value, ...]`` list per group or consumer (Redis 7 adds
``entries-read`` and ``lag``; 7.2 a consumer's ``inactive``); an error reply
is a ``hiredis.ReplyError`` in its place, and the stream then shows no groups.
"""

from __future__ import annotations

from typing import Any

from collectors.records import StreamConsumer, StreamGroup, display
from collectors.resp import Arg

REFRESH_EVERY_S = 1.0
REFRESH_BATCH = 256
SINCE_SLACK_MS = 50
"""Two reads whose idle moments differ by less than this saw no new activity (each
idle time is read at a slightly different moment)."""

Command = tuple[Arg, ...]


def groups_read(raw: bytes) -> Command:
    return (b"XINFO", b"GROUPS", raw)


def group_names(reply: Any) -> list[bytes]:
    """The names in an ``XINFO GROUPS`` reply (none for an error)."""
    if not isinstance(reply, list):
        return []
    return [_fields(g).get("name", b"") for g in reply if isinstance(g, list)]


def consumers_read(raw: bytes, group: bytes) -> list[Command]:
    return [(b"XINFO", b"CONSUMERS", raw, group), (b"XPENDING", raw, group, b"-", b"+", 1)]


def groups(info: Any, per_group: list[Any], read_at: int) -> tuple[StreamGroup, ...]:
    """The groups as ``XINFO GROUPS`` and, per group, its two replies say."""
    if not isinstance(info, list):
        return ()
    found = []
    for i, raw_group in enumerate(g for g in info if isinstance(g, list)):
        g = _fields(raw_group)
        consumers_reply, oldest_reply = per_group[2 * i : 2 * i + 2] or ([], [])
        consumers = (
            tuple(
                StreamConsumer(
                    name=display(c.get("name", b"")),
                    pending=int(c.get("pending", 0)),
                    idle_since_ms=read_at - int(c.get("idle", 0)),
                )
                for c in (_fields(r) for r in consumers_reply if isinstance(r, list))
            )
            if isinstance(consumers_reply, list)
            else ()
        )
        oldest = oldest_reply[0] if isinstance(oldest_reply, list) and oldest_reply else None
        found.append(
            StreamGroup(
                name=display(g.get("name", b"")),
                pending=int(g.get("pending", 0)),
                last_delivered=display(g.get("last-delivered-id", b"")),
                consumers=consumers,
                lag=_int(g.get("lag")),
                entries_read=_int(g.get("entries-read")),
                oldest_pending=display(oldest[0]) if oldest else None,
                oldest_since_ms=read_at - int(oldest[2]) if oldest else None,
                oldest_deliveries=int(oldest[3]) if oldest else 0,
            )
        )
    return tuple(found)


def same(a: tuple[StreamGroup, ...], b: tuple[StreamGroup, ...]) -> bool:
    """Do two reads of a stream's groups say the same (idle moments within the slack)?"""
    return len(a) == len(b) and all(_same_group(x, y) for x, y in zip(a, b, strict=True))


def _same_group(a: StreamGroup, b: StreamGroup) -> bool:
    if (a.name, a.pending, a.last_delivered, a.lag, a.entries_read, a.oldest_pending) != (
        b.name,
        b.pending,
        b.last_delivered,
        b.lag,
        b.entries_read,
        b.oldest_pending,
    ) or a.oldest_deliveries != b.oldest_deliveries:
        return False
    if not _near(a.oldest_since_ms, b.oldest_since_ms) or len(a.consumers) != len(b.consumers):
        return False
    return all(
        (c.name, c.pending) == (d.name, d.pending) and _near(c.idle_since_ms, d.idle_since_ms)
        for c, d in zip(a.consumers, b.consumers, strict=True)
    )


def _near(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < SINCE_SLACK_MS


def _fields(flat: list[Any]) -> dict[str, Any]:
    it = iter(flat)
    return {display(k) if isinstance(k, bytes) else str(k): v for k, v in zip(it, it, strict=False)}


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None
