"""What a recogniser says a key or znode is.

A fact is about one key on one node (or one lock parent znode); the state
joins facts into entities: grants on several masters into one lock, a
Spring Session hash and its ``expires:`` shadow into one session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LockFact:
    name: str
    layout: str
    holder: str | None
    token: str | None
    fence: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class WaitersFact:
    """Who is polling for a lock (coordscope's own clients record it)."""

    lock_name: str
    waiters: tuple[tuple[str, int | None, int | None], ...]
    """(client, waiting since ms, polls so far)."""


@dataclass(frozen=True)
class SessionFact:
    session_id: str
    layout: str
    user: str | None
    attributes: dict[str, str] = field(default_factory=dict)
    created_ms: int | None = None
    last_access_ms: int | None = None
    max_inactive_s: int | None = None
    group: str = ""
    """Sessions sharing a group and id join (Spring Session's namespace)."""
    encoding: str = ""
    """How the value was written (json, msgpack, pickle, hash), or why it is not shown
    (``opaque, 412 bytes``)."""


@dataclass(frozen=True)
class SessionShadowFact:
    """Spring Session's ``sessions:expires:<id>`` key: its presence means live."""

    session_id: str
    group: str


@dataclass(frozen=True)
class MarkFact:
    """An idempotency record: a request id (order id, key) and how far its request got."""

    layout: str
    state: str
    """IN_PROGRESS | COMPLETED | EXPIRED | FAILED (each library's spelling normalised)."""
    owner: str | None = None
    """Who claimed it (an instance), where the library records one."""
    detail: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None
    """The request's payload hash, to refuse the same key with another payload."""
    response: str | None = None
    """The stored response (a status code, or the start of the body)."""
    lease_until_ms: int | None = None
    """When an in-progress claim lapses and another request may take over (wall clock)."""
    expires_at_ms: int | None = None
    """An expiry the library keeps in the value itself (besides the key's TTL)."""


@dataclass(frozen=True)
class TransactionFact:
    txn_id: str
    protocol: str
    state: str
    branches: tuple[tuple[str, str, str], ...] = ()
    """(branch id, state, detail)."""
    since_ms: int | None = None
    """Since when it stands so (a prepared transaction's prepare: its age counts up)."""
    layout: str = "coordscope"
    part_of: str = ""
    """A branch of this global transaction (a prepared transaction whose gid names its
    coordinator's transaction): shown joined with it."""
    note: str = ""
    """What the transaction does (a transfer), where its coordinator says."""


@dataclass(frozen=True)
class MessageFact:
    """A message in flight as its broker or notifier keeps it: a half message waiting
    for its producer's word, a notification on its backoff ladder."""

    msg_id: str
    run: str
    kind: str
    """``half message`` or ``notification``."""
    state: str
    tries: int = 0
    """Check-backs made (a half message), notification attempts made."""
    max_tries: int = 0
    next_ms: int | None = None
    """The next check or attempt (wall-clock ms) while one is due."""
    since_ms: int | None = None
    done_ms: int | None = None
    last: str = ""
    """The last answer (a check-back) or outcome (an attempt)."""
    detail: str = ""


@dataclass(frozen=True)
class RunFact:
    run_id: str
    meta: dict[str, str]


@dataclass(frozen=True)
class RunHistoryFact:
    run_id: str


@dataclass(frozen=True)
class ServiceFact:
    """A scenario's process (a payment service, a worker...) registered in the store."""

    run_id: str
    name: str
    fields: dict[str, str]


@dataclass(frozen=True)
class AuxiliaryFact:
    """A helper key of a known library (a lock signal, an unlock latch, an index).

    Listed as a raw key with a note; never a lock or a session of its own.
    """

    library: str
    role: str


@dataclass(frozen=True)
class Applied:
    """One application of an order's event, as the order's log says."""

    seq: int
    worker: str
    """The consumer that applied it (``<worker>.<incarnation>``)."""
    t_ms: int
    breach: str = ""
    """"" | out-of-order | twice: whether applying it here broke the sequence (so each
    screen marks the very application that did, not just the order)."""


@dataclass(frozen=True)
class RingFact:
    """An ordering run's router: the hash ring it routes by (or its round-robin), as it
    wrote it — parsed once, when the key is read (its fields are untrusted text)."""

    run_id: str
    route: str = "?"
    version: int = 0
    vnodes: int = 0
    workers: tuple[str, ...] = ()
    """In the ring."""
    leaving: tuple[str, ...] = ()
    """Out of the ring, still draining their queues."""
    queues: dict[str, str] = field(default_factory=dict)
    """worker -> its stream's key."""
    points: tuple[tuple[int, int], ...] = ()
    """(point on the 2^32 circle, index into ``workers``), sorted by point."""
    arcs: tuple[float, ...] = ()
    """Each ring worker's fraction of the circle (empty: the route does not hash)."""
    placed: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    """order -> (its point, the worker the ring sends it to; "" when any worker)."""
    change: str = ""
    changed_ms: int | None = None
    moved: dict[str, str] = field(default_factory=dict)
    """order -> ``before -> after``, for the orders the last change moved."""
    split: dict[str, tuple[tuple[str, ...], int | None]] = field(default_factory=dict)
    """order -> (the workers whose queues hold its events not applied yet, since when)."""


@dataclass(frozen=True)
class OrderFact:
    """One order of an ordering run, as its events were applied (its log parsed and
    judged once, when the key is read)."""

    run_id: str
    order: str
    state: str = ""
    applied: tuple[Applied, ...] = ()


@dataclass(frozen=True)
class QueueFact:
    """A queue's body: a list of job ids or messages, or a stream with consumer groups."""

    queue: str
    layout: str
    """``rq``, or ``stream`` / ``list`` for a queue recognised by shape and name alone."""


@dataclass(frozen=True)
class OutboxFact:
    """An outbox table's backlog, read from its database (not a Redis key)."""

    queue: str
    """``<schema>.<table>``"""
    database: str
    unsent: int
    total: int
    oldest_ms: int | None = None
    """When the oldest row not sent yet was written (None: none waits, or no time column)."""
    marker: str = ""
    """How a row is marked sent: ``sent_at IS NULL``, ``NOT sent``, or ``deleted``."""


@dataclass(frozen=True)
class Job:
    """One job of a task-queue library, as its queue lists it."""

    id: str
    status: str
    """The library's own word: queued, started, finished, failed, deferred..."""
    description: str = ""
    worker: str = ""
    enqueued: str = ""
    ended: str = ""


@dataclass(frozen=True)
class JobFact:
    """One job of a task-queue library (an RQ job hash): where it stands."""

    queue: str
    layout: str
    job: Job


@dataclass(frozen=True)
class QueuePartFact:
    """A task-queue library's bookkeeping: a registry of jobs in one status (``status``
    set, the key's size is their number), a worker, a set of names, a job's result.
    Part of its queue's entity (``queue`` empty: of no queue), never a key of its own."""

    queue: str
    layout: str
    role: str
    status: str = ""


Fact = (
    LockFact
    | WaitersFact
    | SessionFact
    | SessionShadowFact
    | MarkFact
    | TransactionFact
    | MessageFact
    | RunFact
    | RunHistoryFact
    | ServiceFact
    | AuxiliaryFact
    | QueueFact
    | OutboxFact
    | JobFact
    | QueuePartFact
    | RingFact
    | OrderFact
)


@dataclass(frozen=True)
class Contender:
    """One child of a ZooKeeper lock znode."""

    node: str
    seq: int
    kind: str
    """``write`` (exclusive) or ``read``."""
    ident: str
    """What identifies the client: kazoo's identifier, else the node's name."""
    session: int


class GroupFact(Protocol):
    """What a znode and its children are together (a lock and its contenders)."""

    @property
    def path(self) -> str: ...

    def claims(self, child: str) -> bool:
        """Is this child part of the group's entity (rather than a znode of its own)?"""
        ...


@dataclass(frozen=True)
class TwoPcLogFact:
    """A two-phase commit coordinator's log entry: one znode per transaction."""

    path: str
    txn_id: str

    def claims(self, child: str) -> bool:
        return False


@dataclass(frozen=True)
class ZkLockFact:
    path: str
    layout: str
    contenders: tuple[Contender, ...]
    """Sorted by sequence number: the queue, holder(s) first."""

    def claims(self, child: str) -> bool:
        return any(c.node == child for c in self.contenders)

    @property
    def holders(self) -> tuple[Contender, ...]:
        """Who holds: the lowest writer, or every reader queued before the first writer."""
        if not self.contenders:
            return ()
        first = self.contenders[0]
        if first.kind == "write":
            return (first,)
        readers = []
        for c in self.contenders:
            if c.kind != "read":
                break
            readers.append(c)
        return tuple(readers)
