"""``txn-tcc``: Try / Confirm / Cancel across two PostgreSQL participants, with Seata's
fence log — or without it.

The seed's fifth section, its second remedy: compensation instead of locks held across
databases. Clients ask a TCC coordinator — a process of its own
(:mod:`scenarios.transactions.tcc_coordinator`), where each transaction stands kept in
Redis — to move money from an account held by one participant to an account held by
the other. Each participant is a service of its own
(:mod:`scenarios.transactions.tcc_participant`) over its PostgreSQL schema: accounts
(``available``, ``frozen``), its fence log and an ``effects`` row per phase it applied.
Try freezes the amount on the debited account, Confirm spends it and credits the other
account, Cancel releases it; with ``fence=on`` the fence log makes Confirm and Cancel
idempotent, records an empty rollback as SUSPENDED and refuses a Try that comes after
its Cancel.

Faults, at the ``fault_at``-th transfer (or the next one when injected live):

- ``confirm-fails``: the debit's Confirm answers 500 twice without applying; the
  coordinator sends it again every 200 ms until it goes through;
- ``empty-rollback``: the debit's Try is dropped (503, it never runs); the coordinator
  cancels both branches, and the debit's Cancel finds no Try: the fence records
  SUSPENDED and changes nothing — without the fence it releases money never frozen;
- ``hanging``: the debit's Try is held three times ``try_timeout_ms`` before it runs;
  the coordinator gives up waiting and cancels (an empty rollback: SUSPENDED); then the
  Try arrives and the fence's primary key refuses it — without the fence it freezes
  funds nobody will release;
- ``duplicate-confirm``: the credit's Confirm applies and its reply is lost (503); the
  coordinator sends it again: a no-op behind the fence, a second credit without it.

Invariant: every branch ends confirmed or cancelled (the same on both participants),
no phase is applied twice, reservations never leak (nothing stays frozen, no Try runs
after its Cancel), and the money is conserved — judged from what the databases hold at
the end (balances, fence logs, effects), read into the history.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

from collectors.layouts import coordscope
from collectors.runs import NEMESIS, RUNNER
from scenarios.kit.catalogue import FaultSpec, Param, ScenarioError, ScenarioSpec
from scenarios.kit.context import RunContext
from scenarios.kit.database import connect
from scenarios.kit.faults import FaultPlan, with_helpers
from scenarios.kit.http import Http
from scenarios.kit.scenario import Scenario
from scenarios.kit.services import Service
from scenarios.transactions import accounts
from scenarios.transactions.accounts import Participant
from scenarios.transactions.tcc_checker import COORDINATOR, INVARIANT, check
from scenarios.transactions.tcc_coordinator import RETRY_FOR_S
from scenarios.transactions.transfers import LAST, MONEY, Desk, Transfer, seed, shares

FAULTS = ("confirm-fails", "empty-rollback", "hanging", "duplicate-confirm")
ARMS = {
    "confirm-fails": ("confirm-fails", -1),
    "empty-rollback": ("drop-try", -1),
    "hanging": ("delay-try", -1),
    "duplicate-confirm": ("lose-confirm-reply", 1),
}
"""A fault -> what the participant of which branch (-1 debit, +1 credit) is armed with."""

SPEC = ScenarioSpec(
    name="txn-tcc",
    title="Try / Confirm / Cancel with a fence log",
    summary="A TCC coordinator process moves money between accounts held by two PostgreSQL participant "
    "services: Try freezes, Confirm spends, Cancel releases; Seata's fence log makes Confirm and Cancel "
    "idempotent, records empty rollbacks and refuses a Try that comes after its Cancel.",
    invariant=INVARIANT,
    params=(
        *MONEY[:2],
        Param(
            "fence",
            "on",
            "on: Seata's TCC fence log guards every phase; off: every call applies (naive)",
            choices=("on", "off"),
        ),
        *MONEY[2:],
        Param(
            "try_timeout_ms",
            "800",
            "how long the coordinator waits for a Try before it cancels",
            minimum=50,
            maximum=60_000,
        ),
        *LAST,
    ),
    faults=(
        FaultSpec("confirm-fails", "the debit's Confirm fails twice (500): the coordinator retries it"),
        FaultSpec(
            "empty-rollback",
            "the debit's Try never runs: its Cancel comes to a branch never tried (SUSPENDED)",
        ),
        FaultSpec(
            "hanging",
            "the debit's Try is held past the coordinator's timeout: it arrives after its Cancel",
        ),
        FaultSpec(
            "duplicate-confirm",
            "the credit's Confirm applies, its reply is lost: the coordinator sends it again",
        ),
    ),
    show="each transaction's hash in Redis (TRYING, CONFIRMING or CANCELLING, then CONFIRMED or CANCELLED, "
    "with its branches), lanes for the clients, the coordinator and both participants (tried, confirmed, "
    "cancelled, suspended, fenced, applied twice)",
    sources=(
        "the seed: TCC — Try, Confirm, Cancel",
        "Seata: TCC mode, TCCFenceHandler and tcc_fence_log (empty rollback, anti-hanging, idempotence)",
    ),
    needs=("postgres",),
)


def service_name(p: Participant) -> str:
    """The participant's service: ``tcc-postgres-1`` (a participant's name may hold a ``/``
    or a ``:`` — two schemas of one server at host:port — which a service name may not)."""
    return "tcc-" + re.sub(r"[^A-Za-z0-9_.-]", "-", p.name)


async def run(ctx: RunContext) -> None:
    if not ctx.env.postgres:
        raise ScenarioError("txn-tcc needs PostgreSQL (coordscope up starts two; or give --pg DSN twice)")
    parts = accounts.participants(ctx.run_id, ctx.env.postgres)
    node = ctx.env.masters[0]
    fence = ctx.choice("fence")
    clients = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*clients, COORDINATOR, *(p.name for p in parts), NEMESIS])
    await seed(ctx, parts, accounts.TCC_DDL, tcc=True)
    ctx.cleanup_matching(node, coordscope.txn_key(f"{ctx.run_id}:*"))
    started = await asyncio.gather(
        *(
            ctx.services.start(service_name(p), "tcc-participant", *participant_command(p, fence))
            for p in parts
        )
    )
    services = {p.name: s for p, s in zip(parts, started, strict=True)}
    coordinator = await ctx.services.start(
        COORDINATOR,
        "tcc-coordinator",
        *coordinator_command(services, ctx.env.target(node).url, ctx.number("try_timeout_ms"), fence),
    )
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"participants {', '.join(f'{p.name} ({p.target.address}, {p.schema})' for p in parts)}; "
        f"{COORDINATOR} keeps its transactions in {coordscope.txn_key(ctx.run_id + ':*')} on {node}; "
        f"fence={fence}",
    )
    lab = _Lab(ctx, parts, services, coordinator, ctx.closing(Http()))
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    work = [lab.client(c, share, plan) for c, share in zip(clients, shares(ctx, clients), strict=True)]
    await with_helpers(ctx, plan.arm, work)
    for fault in [*plan.armed, *plan.scheduled]:
        ctx.record(RUNNER, "info", "fault-unused", value=fault, note=f"{fault} came after the last transfer")
    await asyncio.gather(*lab.background)
    left = await lab.idle(services)  # a late Try lands before the databases are read
    if left:
        ctx.record(RUNNER, "info", "unsettled", note=f"still at work: {'; '.join(left)}")
    ctx.record(RUNNER, "info", "drain", note="the coordinator and the participants stop")
    await ctx.services.stop_all(timeout=5)
    await _read_participants(ctx, parts)
    await lab.table()


def participant_command(p: Participant, fence: str) -> tuple[str, list[str]]:
    """A participant process's module and arguments (the run's and the benchmark's alike)."""
    return "scenarios.transactions.tcc_participant", [
        "--dsn", p.target.dsn, "--schema", p.schema, "--participant", p.name, "--fence", fence,
    ]  # fmt: skip


def coordinator_command(
    participants: dict[str, Service], redis_url: str, try_timeout_ms: int, fence: str
) -> tuple[str, list[str]]:
    """The coordinator's module and arguments: the participants by name and address."""
    addresses = [{"name": n, "address": s.address} for n, s in participants.items()]
    return "scenarios.transactions.tcc_coordinator", [
        "--participants", json.dumps(addresses), "--redis", redis_url,
        "--try-timeout-ms", str(try_timeout_ms), "--fence", fence,
    ]  # fmt: skip


class _Lab(Desk):
    """The run's side: clients, and the faults armed at the participants."""

    def __init__(
        self,
        ctx: RunContext,
        parts: list[Participant],
        services: dict[str, Service],
        coordinator: Service,
        http: Http,
    ) -> None:
        super().__init__(ctx, parts, http)
        self.services, self.coordinator = services, coordinator
        self.background: list[asyncio.Task[None]] = []
        self.try_timeout_s = ctx.number("try_timeout_ms") / 1000
        self.timeout_s = self.try_timeout_s + RETRY_FOR_S + 10

    async def client(self, actor: str, share: list[int], plan: FaultPlan) -> None:
        for n in share:
            if self.ctx.stopping.is_set():
                return
            plan.step()
            fault = plan.take()
            t = self.transfer(n + 1)
            if fault is None:
                await self.send(actor, t)
            else:
                service, branch = await self.arm(t, fault)
                await self.send(actor, t)
                if fault == "hanging":  # the window closes when the late Try has landed
                    self.background.append(asyncio.create_task(self.heal_when_done(service, t, branch)))
                else:
                    self.ctx.record(NEMESIS, "info", "heal", value=fault, note=f"{t.txn} answered")
            await self.table()

    async def arm(self, t: Transfer, fault: str) -> tuple[Service, str]:
        what, sign = ARMS[fault]
        branch = t.source[0] if sign < 0 else t.target[0]
        service = self.services[branch]
        delay_ms = 3 * self.ctx.number("try_timeout_ms") if fault == "hanging" else 0
        body = {"xid": f"{self.ctx.run_id}:{t.txn}", "branch": branch, "fault": what, "delay_ms": delay_ms}
        reply = await self.http.post(service, "/_arm", body, 5)
        if not reply.ok:
            raise ScenarioError(f"could not arm {service.name}: {reply.error or reply.status}")
        notes = {
            "confirm-fails": f"{branch} fails {t.txn}'s Confirm twice (500) before it applies it",
            "empty-rollback": f"{branch} drops {t.txn}'s Try (503, never run): its Cancel finds no Try",
            "hanging": f"{branch} holds {t.txn}'s Try {delay_ms} ms, past the coordinator's "
            f"{self.ctx.number('try_timeout_ms')} ms: it arrives after its Cancel",
            "duplicate-confirm": f"{branch} applies {t.txn}'s Confirm, then its reply is lost (503): "
            "it comes again",
        }
        self.ctx.record(NEMESIS, "info", "fault", value=fault, note=notes[fault])
        return service, branch

    async def send(self, actor: str, t: Transfer) -> None:
        await self.ask(actor, [self.coordinator], t, self.timeout_s, "confirmed")

    async def busy(self, service: Service) -> list[str] | None:
        reply = await self.http.get(service, "/_busy", 2)
        return [str(x) for x in reply.body.get("busy", [])] if reply.ok else None

    async def heal_when_done(self, service: Service, t: Transfer, branch: str) -> None:
        await self.idle({branch: service}, f"{t.txn}/{branch} try")
        self.ctx.record(NEMESIS, "info", "heal", value="hanging", note=f"{t.txn}'s late Try has landed")

    async def idle(self, services: dict[str, Service], call: str = "") -> list[str]:
        """Wait until these participants are done with every call (or that ``call``), for
        as long as a late Try may take; what is still at work then."""
        deadline = time.monotonic() + 3 * self.try_timeout_s + 10
        while True:  # another process's state: polled
            left = [
                f"{name}: {b}"
                for name, s in services.items()
                for b in await self.busy(s) or []
                if not call or b == call
            ]
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.05)


async def _read_participants(ctx: RunContext, parts: list[Participant]) -> None:
    """What each database holds at the end, into the history the checker judges."""
    prefix = ctx.run_id + ":"
    for p in parts:
        async with await connect(p.target, autocommit=True) as conn:
            held = await accounts.balances(conn, p.schema, tcc=True)
            fence = await accounts.fence_log(conn, p.schema)
            effects = await accounts.effects(conn, p.schema)
        available = sum(a for a, _ in held.values())
        frozen = sum(f for _, f in held.values())
        statuses = Counter(s for _, _, s in fence)
        ctx.record(
            RUNNER, "ok", "balances", key=p.name, value=str(available),
            note=f"{p.name}: {available} available, {frozen} frozen in {len(held)} account(s); "
            f"{len(effects)} phase(s) applied; fence log: "
            + (", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "empty"),
            data={
                "accounts": {a: [av, fr] for a, (av, fr) in held.items()},
                "available": available,
                "frozen": frozen,
                "fence": [[x.removeprefix(prefix), b, s] for x, b, s in fence],
                "effects": [[x.removeprefix(prefix), b, ph, a, da, df] for x, b, ph, a, da, df in effects],
            },
        )  # fmt: skip
    ctx.record(RUNNER, "ok", "db-read", note=f"{len(parts)} participant(s) read")


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
