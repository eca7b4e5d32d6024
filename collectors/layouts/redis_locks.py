"""Redis locks that third-party libraries leave behind.

What each library writes (observed, see ``shared/research/layouts.md``):

- redis-py ``Lock``: a string at a key of the caller's choosing holding
  ``uuid1().hex`` (32 hex digits), ``PX`` timeout (none when timeout=None).
- node-redlock: the same shape (16 random bytes as hex) on each of several
  masters; told apart from redis-py only by the token's uuid1 version
  nibble, or by the same token on several masters (the state decides that).
- pottery ``Redlock``: ``redlock:<name>`` holding a uuid4 *with dashes*.
- python-redis-lock: ``lock:<name>`` holding 24 characters of base64; its
  ``lock-signal:<name>`` list is a wake-up signal, never a lock.
- Redisson ``RLock``: a hash with one field ``<uuid>:<threadId>`` whose
  value is the reentrancy count; its ``redisson_unlock_latch:`` strings are
  helpers, never locks.

With no configuration, a string is a lock when its name contains ``lock``
or when it holds a token-like value (32 hex digits, a UUID, 24 characters
of base64) and has a TTL. Users add glob patterns in the config file.
"""

from __future__ import annotations

import fnmatch
import re

from collectors.layouts.facts import AuxiliaryFact, Fact, LockFact
from collectors.records import KeyRecord, display

HEX32 = re.compile(r"^[0-9a-f]{32}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
B64_24 = re.compile(r"^[A-Za-z0-9+/]{24}$")
REDISSON_FIELD = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:\d+$")

AUXILIARY_PREFIXES = (
    ("lock-signal:", "python-redis-lock", "release signal"),
    ("redisson_unlock_latch:", "redisson", "unlock latch"),
    ("redisson_lock__channel:", "redisson", "lock channel"),
)


def token_shape(value: str) -> str | None:
    """Which library's token this value looks like, if any."""
    if HEX32.match(value):
        # uuid1().hex: version nibble 1 at index 12, RFC 4122 variant at index 16
        if value[12] == "1" and value[16] in "89ab":
            return "redis-py"
        return "node-redlock"
    if UUID.match(value):
        return "uuid"
    if B64_24.match(value):
        return "python-redis-lock"
    return None


def recognise(
    rec: KeyRecord, lock_patterns: tuple[str, ...] = ("*lock*",), heuristics: bool = True
) -> Fact | None:
    key = rec.key
    for prefix, library, role in AUXILIARY_PREFIXES:
        if key.startswith(prefix):
            return AuxiliaryFact(library=library, role=role)
    if rec.type == "hash":
        return _redisson(rec)
    if rec.type != "string" or rec.value is None:
        return None
    value = display(rec.value)
    shape = token_shape(value)
    named = any(fnmatch.fnmatchcase(key, p) for p in lock_patterns)
    if not named and not (heuristics and shape and rec.ttl_ms is not None):
        return None
    if key.startswith("redlock:") and shape == "uuid":
        layout = "pottery"
    elif key.startswith("lock:") and shape == "python-redis-lock":
        layout = "python-redis-lock"
    elif shape in ("redis-py", "node-redlock"):
        layout = shape
    elif shape == "uuid":
        layout = "token"
    else:
        layout = "pattern" if named else "token"
    return LockFact(name=key, layout=layout, holder=value, token=value)


def _redisson(rec: KeyRecord) -> Fact | None:
    """A Redisson lock hash: every field ``<uuid>:<threadId>``, every value a count."""
    if not rec.fields or len(rec.fields) > 8:
        return None
    owners = []
    for field_raw, count_raw in rec.fields.items():
        name = display(field_raw)
        if not REDISSON_FIELD.match(name) or not count_raw.isdigit():
            return None
        owners.append((name, int(count_raw)))
    owner, count = sorted(owners)[0]
    return LockFact(
        name=rec.key, layout="redisson", holder=owner, token=owner, detail=f"reentrancy count {count}"
    )
