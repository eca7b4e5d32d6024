"""ZooKeeper locks: a parent znode whose ephemeral-sequential children queue for it.

Every common recipe works the same way: each contender creates an
ephemeral sequential child under the lock's znode; the lowest sequence
number holds, every other contender watches the one just before it. Only
the children's names differ:

- kazoo ``Lock`` / ``WriteLock``: ``<uuid4 hex>__lock__<seq>``, data = the
  identifier given to ``Lock()``; ``ReadLock``: ``__rlock__``.
- Apache Curator ``InterProcessMutex``: ``_c_<uuid>-lock-<seq>`` (``_c_<uuid>-``
  is Curator's protection prefix), data = the client's IP address, the same
  for every contender on a host, so the node name identifies the holder.
  Curator's read/write lock: ``_c_<uuid>-__READ__<seq>`` / ``__WRIT__``.
- coordscope: ``<owner>__lock__<seq>`` under ``/coordscope/locks/<name>``,
  data = the owner.
- Anything else: an ephemeral child whose name contains ``lock`` and ends
  in a 10-digit sequence number.

Readers queued before the first writer all hold a read/write lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from collectors.layouts.facts import Contender, ZkLockFact
from collectors.records import ZNodeRecord, display

KAZOO = re.compile(r"^(?P<uuid>[0-9a-f]{32})__(?P<kind>lock|rlock)__(?P<seq>\d{10})$")
CURATOR = re.compile(
    r"^_c_(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-"
    r"(?P<kind>lock-|__READ__|__WRIT__)(?P<seq>\d{10})$"
)
COORDSCOPE = re.compile(r"^(?P<owner>.+)__(?P<kind>lock)__(?P<seq>\d{10})$")
GENERIC = re.compile(r"^(?P<name>.*lock.*?)(?P<seq>\d{10})$", re.IGNORECASE)


def _classify(child: ZNodeRecord, under_coordscope: bool) -> tuple[str, Contender] | None:
    name = child.name
    data = display(child.data)
    m = KAZOO.match(name)
    if m:
        kind = "read" if m["kind"] == "rlock" else "write"
        return "kazoo", Contender(
            node=name, seq=int(m["seq"]), kind=kind, ident=data or name, session=child.ephemeral_owner
        )
    m = CURATOR.match(name)
    if m:
        kind = "read" if m["kind"] == "__READ__" else "write"
        return "curator", Contender(
            node=name, seq=int(m["seq"]), kind=kind, ident=name, session=child.ephemeral_owner
        )
    m = COORDSCOPE.match(name)
    if m and under_coordscope:
        return "coordscope", Contender(
            node=name,
            seq=int(m["seq"]),
            kind="write",
            ident=data or m["owner"],
            session=child.ephemeral_owner,
        )
    m = GENERIC.match(name)
    if m and child.ephemeral:
        return "zk-lock", Contender(
            node=name, seq=int(m["seq"]), kind="write", ident=data or name, session=child.ephemeral_owner
        )
    return None


def recognise(
    path: str, children: Iterable[ZNodeRecord], extra: tuple[re.Pattern[str], ...] = ()
) -> ZkLockFact | None:
    """A lock at ``path`` when at least one child is a contender of a known recipe."""
    under_coordscope = path == "/coordscope" or path.startswith("/coordscope/")
    layouts: dict[str, int] = {}
    contenders: list[Contender] = []
    for child in children:
        found = _classify(child, under_coordscope)
        if found is None:
            found = _classify_extra(child, extra)
        if found is None:
            continue
        layout, contender = found
        layouts[layout] = layouts.get(layout, 0) + 1
        contenders.append(contender)
    if not contenders:
        return None
    layout = max(layouts, key=lambda k: layouts[k])
    contenders.sort(key=lambda c: (c.seq, c.node))
    return ZkLockFact(path=path, layout=layout, contenders=tuple(contenders))


def _classify_extra(
    child: ZNodeRecord, patterns: tuple[re.Pattern[str], ...]
) -> tuple[str, Contender] | None:
    """User patterns from the config file: a regex with a ``seq`` group."""
    for pattern in patterns:
        m = pattern.match(child.name)
        if m and "seq" in m.groupdict():
            data = display(child.data)
            return "pattern", Contender(
                node=child.name,
                seq=int(m["seq"]),
                kind="write",
                ident=data or child.name,
                session=child.ephemeral_owner,
            )
    return None
