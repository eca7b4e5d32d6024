"""Transactions: where each distributed transaction stands, branch by branch.

coordscope's own scenarios keep a transaction's state in ``coordscope:txn:<id>``
(protocol, state, branches). The PostgreSQL collector adds every prepared transaction
— a branch in doubt, whoever prepared it, with its age, the locks it holds and who
waits on them — and every session idle in a transaction
(:mod:`collectors.layouts.postgres_xacts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from collectors.families.base import Column, Family, Member, age, own, prefer_master, status, text
from collectors.layouts import coordscope, postgres_xacts
from collectors.layouts.facts import TransactionFact
from collectors.records import KeyRecord


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
    node: str = ""
    as_of_ms: int = 0
    stale: bool = False


def _detail(t: Transaction) -> Any:
    detail = "; ".join(b.detail for b in t.branches if b.detail)
    return text(detail or None, title=detail)


class Transactions(Family):
    kind = "transaction"
    plural = "transactions"
    title = "Transactions"
    entity = Transaction
    facts = (TransactionFact,)
    recognisers = (own(coordscope.recognise_transaction), own(postgres_xacts.recognise))
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
        return str(fact.txn_id)

    def build(self, entity_id: str, members: list[Member]) -> Transaction | None:
        found = prefer_master(self.view, members, TransactionFact)
        if found is None:
            return None
        node_id, rec, fact = found
        return Transaction(
            id=entity_id,
            protocol=fact.protocol,
            state=fact.state,
            branches=tuple(Branch(id=b, state=s, detail=d) for b, s, d in fact.branches),
            layout=fact.layout,
            since_ms=fact.since_ms,
            node=node_id,
            as_of_ms=rec.read_at_ms,
            stale=self.view.stale(n for n, _ in members),
        )

    def narrate(self, old: Transaction | None, new: Transaction | None, cause: str) -> None:
        if new is not None and (old is None or old.state != new.state):
            self.view.log("info", new.node, f"transaction {new.id} ({new.protocol}): {new.state}")
