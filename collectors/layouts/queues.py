"""Queues recognised by shape alone, whoever wrote them.

- A stream with at least one consumer group is a queue (``XGROUP CREATE`` is
  how any client, in any language, makes a stream a work queue).
- A list whose name matches one of the ``queue_patterns`` (by default any
  name containing ``queue``, ``jobs`` or ``tasks``) is a queue: ``LPUSH`` /
  ``BRPOP`` work lists have no other mark.

A stream without groups is a log, not a queue; it stays a raw key.
"""

from __future__ import annotations

import fnmatch

from collectors.layouts.facts import Fact, QueueFact
from collectors.records import KeyRecord


def recognise(rec: KeyRecord, patterns: tuple[str, ...]) -> Fact | None:
    if rec.type == "stream" and rec.groups:
        return QueueFact(queue=rec.key, layout="stream")
    if rec.type == "list" and any(fnmatch.fnmatchcase(rec.key, p) for p in patterns):
        return QueueFact(queue=rec.key, layout="list")
    return None
