"""What every transaction scenario's run does the same way: clients ask a coordinator
to move money between the two participants, and the run keeps score.

- :data:`MONEY` and :data:`LAST`: the parameters they share (how many transfers, by how
  many clients, between how many accounts holding how much; which transfer a fault
  hits; the seed that picks the accounts);
- :func:`seed`: each participant's schema, made with the scenario's tables and its
  accounts funded, and the total put in, recorded for the checker;
- :class:`Desk`: picks each transfer's accounts (seeded), sends it to a coordinator
  and records the client's answer on the client's lane, and keeps the run's table.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collectors.runs import RUNNER
from scenarios.kit.catalogue import Param
from scenarios.kit.context import RunContext
from scenarios.kit.database import connect, create_schema
from scenarios.kit.http import Http, Reply
from scenarios.kit.services import Service
from scenarios.transactions import accounts
from scenarios.transactions.accounts import Participant

MONEY = (
    Param("transfers", "8", "transfers to make", minimum=1, maximum=2000),
    Param("clients", "2", "clients making them at once", minimum=1, maximum=16),
    Param("accounts", "3", "accounts on each participant", minimum=1, maximum=100),
    Param("balance", "1000", "each account's opening balance", minimum=0, maximum=1_000_000_000),
    Param("amount", "10", "each transfer's amount", minimum=1, maximum=1_000_000),
)
LAST = (
    Param("fault_at", "3", "which transfer a fault given at start hits", minimum=1, maximum=2000),
    Param("seed", "7", "which accounts each transfer picks", minimum=0, maximum=1_000_000),
)


@dataclass(frozen=True)
class Transfer:
    txn: str
    source: tuple[str, str]
    """(participant, account) debited."""
    target: tuple[str, str]
    amount: int

    def body(self) -> dict[str, Any]:
        return {"txn": self.txn, "from": list(self.source), "to": list(self.target), "amount": self.amount}

    @property
    def what(self) -> str:
        return f"{self.txn}: {self.amount} from {'/'.join(self.source)} to {'/'.join(self.target)}"


async def seed(ctx: RunContext, parts: list[Participant], ddl: str, tcc: bool) -> None:
    """Each participant's schema (dropped when the run ends) with its accounts funded."""
    ids = accounts.account_ids(ctx.number("accounts"))
    for p in parts:
        ctx.cleanup_schema(p.target, p.schema)
        await create_schema(p.target, p.schema, ddl)
        async with await connect(p.target, autocommit=True) as conn:
            await conn.execute(accounts.seed_sql(p.schema, ids, ctx.number("balance"), tcc=tcc))
    total = len(ids) * ctx.number("balance") * len(parts)
    ctx.record(
        RUNNER,
        "ok",
        "seeded",
        note=f"{len(ids)} account(s) of {ctx.number('balance')} on each of {len(parts)} participants: "
        f"{total} in all",
        data={"total": total, "participants": [p.name for p in parts]},
    )


def shares(ctx: RunContext, clients: Sequence[str]) -> list[list[int]]:
    """The transfers each client makes (dealt round-robin)."""
    return [list(range(i, ctx.number("transfers"), len(clients))) for i in range(len(clients))]


class Desk:
    """The clients' side of a run: which accounts each transfer moves money between, what
    each client was answered, and the run's table of it."""

    def __init__(self, ctx: RunContext, parts: list[Participant], http: Http) -> None:
        self.ctx, self.parts, self.http = ctx, parts, http
        self.rng = random.Random(ctx.number("seed"))
        self.ids = accounts.account_ids(ctx.number("accounts"))
        self.outcomes: dict[str, str] = {}
        self.transfers: dict[str, Transfer] = {}

    def transfer(
        self, n: int, amount: int | None = None, source: tuple[str, str] | None = None, prefix: str = "t"
    ) -> Transfer:
        """Transfer ``<prefix><n>``: from a random account of one participant (or ``source``)
        to a random account of the other."""
        a, b = self.rng.sample([p.name for p in self.parts], 2)
        if source is not None:
            a = source[0]
            b = next(p.name for p in self.parts if p.name != a)
        t = Transfer(
            txn=f"{prefix}{n}",
            source=source or (a, self.rng.choice(self.ids)),
            target=(b, self.rng.choice(self.ids)),
            amount=amount or self.ctx.number("amount"),
        )
        self.transfers[t.txn] = t
        return t

    async def ask(
        self, actor: str, services: Sequence[Service], t: Transfer, timeout_s: float, done: str
    ) -> str:
        """Ask the first coordinator (a refused connection — nobody listens there, nothing
        was sent — goes to the next); ``done`` is the outcome that counts as success."""
        span = {"span": t.txn}
        self.ctx.record(
            actor, "invoke", "transfer", key=t.txn, note=f"{t.what} via {services[0].name}", data=span
        )
        reply = await self.http.post(services[0], "/transfer", t.body(), timeout_s)
        for before, other in itertools.pairwise(services):
            if reply.error != "refused":
                break
            note = f"{before.name} refused the connection: via {other.name}"
            self.ctx.record(actor, "info", "failover", key=t.txn, note=note)
            reply = await self.http.post(other, "/transfer", t.body(), timeout_s)
        outcome = self._answered(actor, t, reply, done)
        self.outcomes[t.txn] = outcome
        return outcome

    def _answered(self, actor: str, t: Transfer, reply: Reply, done: str) -> str:
        span = {"span": t.txn}
        if reply.ok:
            outcome = str(reply.body.get("outcome"))
            why = str(reply.body.get("reason") or "")
            kind = "ok" if outcome == done else "fail"
            note = outcome + (f": {why}" if why else "")
            self.ctx.record(actor, kind, "transfer", key=t.txn, value=outcome, note=note, data=span)
            return outcome
        note = f"no answer ({reply.error or reply.status}): the outcome is the coordinator's to tell"
        tick = span | {"tick": "timeout"}
        self.ctx.record(actor, "info", "transfer", key=t.txn, value="unknown", note=note, data=tick)
        return "unknown"

    async def table(self) -> None:
        rows = [["transfer", "from", "to", "amount", "client's answer"]]
        for txn, t in sorted(self.transfers.items(), key=lambda kv: (int(kv[0][1:]), kv[0])):
            rows.append(
                [txn, "/".join(t.source), "/".join(t.target), str(t.amount), self.outcomes.get(txn, "…")]
            )
        await self.ctx.set_table(rows)
