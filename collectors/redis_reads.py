"""Reading a Redis key back, bounded: the commands, and their replies as a KeyRecord.

Two pipelined round trips per batch of keys. The first asks every key's
``TYPE`` and ``PTTL`` and, on the guess that it is a string (locks, marks
and most sessions are), its ``STRLEN`` and a bounded ``GETRANGE`` — a
string then takes one trip only, anything else answers WRONGTYPE there. The
second reads the other types by size and a bounded slice: up to
``MAX_FIELDS`` hash fields, the first ``MAX_ITEMS`` members of a
collection, the newest entry of a stream — or, for a run's history stream,
up to ``MAX_STREAM_READ`` entries after the last one read.

Replies are RESP2 as hiredis gives them (:mod:`collectors.resp`): a hash or
a stream entry is a flat ``[field, value, ...]`` list, an error reply a
``hiredis.ReplyError`` in its place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from collectors.layouts import coordscope
from collectors.records import KeyRecord, display
from collectors.resp import Arg

MAX_VALUE = 64 * 1024
MAX_FIELDS = 512
MAX_ITEMS = 16
MAX_STREAM_READ = 1000

Command = tuple[Arg, ...]


def is_history(raw: bytes) -> bool:
    """A run's history stream (read on from its last entry, not just its newest)."""
    return display(raw).startswith(coordscope.history_key(""))


def first_read(keys: Iterable[bytes]) -> list[Command]:
    """The first round trip for a batch of keys: four commands each."""
    return [
        c
        for raw in keys
        for c in ((b"TYPE", raw), (b"PTTL", raw), (b"STRLEN", raw), (b"GETRANGE", raw, 0, MAX_VALUE - 1))
    ]


def second_read(raw: bytes, kind: str, stream_pos: bytes | None = None) -> list[Command]:
    """The second round trip, for every type but strings (the first one read those): a
    size and a bounded read. ``stream_pos``: the last history entry read before."""
    if kind == "hash":
        return [(b"HLEN", raw), (b"HSCAN", raw, 0, b"COUNT", MAX_FIELDS)]
    if kind == "list":
        return [(b"LLEN", raw), (b"LRANGE", raw, 0, MAX_ITEMS - 1)]
    if kind == "set":
        return [(b"SCARD", raw), (b"SSCAN", raw, 0, b"COUNT", MAX_ITEMS)]
    if kind == "zset":
        return [(b"ZCARD", raw), (b"ZRANGE", raw, 0, MAX_ITEMS - 1)]
    if kind == "stream":
        if is_history(raw):
            since = b"(" + stream_pos if stream_pos else b"-"
            return [(b"XLEN", raw), (b"XRANGE", raw, since, b"+", b"COUNT", MAX_STREAM_READ)]
        return [(b"XLEN", raw), (b"XREVRANGE", raw, b"+", b"-", b"COUNT", 1)]
    return [(b"EXISTS", raw), (b"EXISTS", raw)]


def record(
    node: str, raw: bytes, cause: str, kind: str, ttl: int | None, read_at: int, replies: list[Any]
) -> KeyRecord | None:
    """The key as its size and body replies say (None: a reply was an error — the key
    changed type between the two round trips)."""
    size, body = replies
    if isinstance(size, Exception) or isinstance(body, Exception):
        return None
    common: dict[str, Any] = dict(
        node=node, raw_key=raw, type=kind, ttl_ms=ttl, read_at_ms=read_at, size=int(size), cause=cause
    )
    if kind == "string":
        return KeyRecord(value=body, truncated=int(size) > len(body), **common)
    if kind == "hash":
        fields = pairs(body[1])
        return KeyRecord(fields=fields, truncated=int(size) > len(fields), **common)
    if kind in ("list", "set", "zset"):
        items = tuple(body[1] if kind == "set" else body)[:MAX_ITEMS]
        return KeyRecord(items=items, truncated=int(size) > len(items), **common)
    if kind == "stream":
        entries = tuple((entry_id, pairs(fields or [])) for entry_id, fields in body)
        return KeyRecord(entries=entries, **common)
    return KeyRecord(**common)


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """``[field, value, field, value...]`` (RESP2's hash and stream entries) as a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))
