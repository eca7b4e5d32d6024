"""Transactions: where each distributed transaction stands, branch by branch.

coordscope's own scenarios keep a transaction's state where its coordinator keeps it:
a 2PC coordinator's log in ZooKeeper (one znode per transaction), a TCC coordinator's
hash ``coordscope:txn:<id>`` in Redis. The PostgreSQL collector adds every prepared
transaction — a branch in doubt, whoever prepared it, with its age, the locks it holds
and who waits on them — and every session idle in a transaction
(:mod:`collectors.layouts.postgres_xacts`).

What belongs together is one row: a prepared transaction whose gid names one of our
coordinators' transactions (:func:`collectors.layouts.coordscope.branch_gid`) is shown
as that transaction's branch, as the database holds it — PREPARED, with its locks and
waiters — and the transaction is IN DOUBT, aged from its oldest prepared branch, for as
long as a database holds one. A branch whose coordinator's log is gone (deleted, or
never written) still shows, under its transaction's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import Column, Family, Member, age, own, prefer_master, status, text
from collectors.layouts import coordscope, postgres_xacts
from collectors.layouts.facts import TransactionFact, TwoPcLogFact
from collectors.records import KeyRecord, ZNodeRecord

IN_DOUBT = "IN DOUBT"


@dataclass(frozen=True)
class Branch:
    id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class Transaction:
    KIND: ClassVar[str] = "transaction"
    id: str
    protocol: str
    state: str
    branches: tuple[Branch, ...] = ()
    layout: str = "coordscope"
    since_ms: int | None = None
    """Since when it stands so: its age counts up on the screens."""
    note: str = ""
    """What it does (a transfer), as its coordinator says."""
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def _detail(t: Transaction) -> Any:
    detail = "; ".join(
        [*([t.note] if t.note else []), *(f"{b.id}: {b.detail}" for b in t.branches if b.detail)]
    )
    return text(detail or None, title=detail)


class Transactions(Family):
    kind = "transaction"
    plural = "transactions"
    title = "Transactions"
    entity = Transaction
    facts = (TransactionFact,)
    group_facts = (TwoPcLogFact,)
    recognisers = (own(coordscope.recognise_transaction), own(postgres_xacts.recognise))
    group_recognisers = (coordscope.recognise_two_pc,)
    sort = "id"
    empty = "no transactions"
    columns = (
        Column("id", "transaction", lambda t: text(t.id), limit=30),
        Column("state", "state", lambda t: status(t.state)),
        Column("age", "age", lambda t: age(t.since_ms)),
        Column(
            "branches",
            "branches",
            lambda t: text(
                " ".join(f"{b.id}:{b.state}" for b in t.branches),
                title="\n".join(f"{b.id}: {b.state} {b.detail}" for b in t.branches),
            ),
            limit=30,
        ),
        # what a branch holds and who waits on it: before the protocol, which a narrow
        # screen may cut
        Column("detail", "detail", _detail, limit=56),
        Column("protocol", "protocol", lambda t: text(t.protocol), limit=26),
    )

    def entity_id(self, node_id: str, rec: KeyRecord, fact: Any) -> str:
        return str(fact.part_of or fact.txn_id)

    def group_entity_id(self, node_id: str, path: str, fact: Any) -> str:
        return str(fact.txn_id)

    def build(self, entity_id: str, members: list[Member]) -> Transaction | None:
        coordinator: tuple[str, int, TransactionFact] | None = None
        branches: list[tuple[str, int, TransactionFact]] = []
        for member in sorted(members):
            rec, fact = self.view.observation(member)
            if isinstance(rec, ZNodeRecord):
                if isinstance(self.view.zk_group(*member), TwoPcLogFact):
                    coordinator = (member[0], rec.read_at_ms, coordscope.read_two_pc(rec, entity_id))
            elif isinstance(fact, TransactionFact) and fact.part_of:
                branches.append((member[0], rec.read_at_ms, fact))
        if coordinator is None and not branches:
            found = prefer_master(self.view, members, TransactionFact)
            if found is None:
                return None
            node_id, key_rec, fact = found
            coordinator = (node_id, key_rec.read_at_ms, fact)
        return _joined(entity_id, coordinator, branches, self.view.stale(n for n, _ in members))

    def narrate(self, old: Transaction | None, new: Transaction | None, cause: str) -> None:
        if new is not None and (old is None or old.state != new.state):
            self.view.log("info", new.node, f"transaction {new.id} ({new.protocol}): {new.state}")


def _joined(
    entity_id: str,
    coordinator: tuple[str, int, TransactionFact] | None,
    prepared: list[tuple[str, int, TransactionFact]],
    stale: bool,
) -> Transaction:
    """A coordinator's transaction with its branches as the databases hold them.

    A database is polled: a branch it showed prepared before the coordinator logged the
    transaction DONE is an older reading than the log's, not a branch in doubt."""
    if coordinator is not None and coordinator[2].state == "DONE" and coordinator[2].since_ms is not None:
        done_ms = coordinator[2].since_ms
        prepared = [p for p in prepared if p[1] >= done_ms]
    held = {f.branches[0][0]: (node, f) for node, _, f in prepared if f.branches}
    branches: list[Branch] = []
    if coordinator is not None:
        node, read_at, fact = coordinator
        for b, state, detail in fact.branches:
            if b in held:  # the database holds it prepared: that, whatever the log says
                _, db = held.pop(b)
                branches.append(Branch(id=b, state="PREPARED", detail=f"{db.branches[0][2]}; log: {state}"))
            else:
                branches.append(Branch(id=b, state=state, detail=detail))
    branches += [Branch(id=b, state="PREPARED", detail=f.branches[0][2]) for b, (_, f) in held.items()]
    in_doubt = [f.since_ms for _, _, f in prepared if f.since_ms is not None]
    if coordinator is None:
        node, read_at = prepared[0][0], max(r for _, r, _ in prepared)
        protocol, state, note = "2PC (no coordinator's log found)", IN_DOUBT, "coordinator's log not found"
        since = min(in_doubt, default=None)
    else:
        node, read_at, fact = coordinator
        protocol, note = fact.protocol, fact.note
        if prepared:
            state, since = f"{IN_DOUBT} ({fact.state})", min(in_doubt, default=fact.since_ms)
        else:
            state, since = fact.state, fact.since_ms
    return Transaction(
        id=entity_id,
        protocol=protocol,
        state=state,
        branches=tuple(branches),
        layout=coordinator[2].layout if coordinator else postgres_xacts.LAYOUT,
        since_ms=since,
        note=note,
        node=node,
        as_of_ms=read_at,
        stale=stale,
    )
