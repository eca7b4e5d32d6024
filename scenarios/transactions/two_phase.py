"""``txn-2pc``: two-phase commit across two real PostgreSQL servers.

The seed's fifth section, its first remedy: XA, one transaction spanning two
databases. Clients ask coordinators — processes of their own
(:mod:`scenarios.transactions.coordinator`), their log in ZooKeeper — to move money
from an account held by one PostgreSQL server to an account held by the other; each
branch does its work and ``PREPARE TRANSACTION``, and the coordinator's logged
decision is carried out with ``COMMIT PREPARED`` / ``ROLLBACK PREPARED``.

Faults, at the ``fault_at``-th transfer (or the next one when injected live):

- ``vote-no``: the transfer asks more than the account holds; the debited
  participant's ``CHECK (balance >= 0)`` refuses the branch: it votes no, and the
  branch already prepared on the other server is rolled back;
- ``coordinator-crash-after-prepare``: the coordinator is SIGKILLed after every
  branch prepared and its COMMIT decision is logged, before phase two: both branches
  stay PREPARED, in doubt, holding their row locks. A transfer through another
  coordinator touching the same account blocks behind them (the run shows who waits
  on whom); ``fault_ms`` later the coordinator restarts and, with ``recovery=on``,
  commits what its log decided — the blocked transfer goes through. With
  ``recovery=off`` nobody resolves them;
- ``coordinator-crash-before-log``: the same crash after the votes but before the
  decision reaches the log: recovery finds no decision and presumes abort;
- ``participant-crash-after-prepare``: once the decision is logged, the second
  PostgreSQL server is SIGKILLed; its prepared branch survives the restart (it is
  read back in ``pg_prepared_xacts``) and the coordinator's retried phase two commits it.

Invariant: every transfer has the same outcome on both participants (the ``applied``
rows each database holds), money is conserved across the two databases, and nothing
is left in doubt at the end (``pg_prepared_xacts``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator

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
from scenarios.transactions.transfers import LAST, MONEY, Desk, Transfer, seed, shares
from scenarios.transactions.two_phase_checker import INVARIANT, PROBE, check

CRASHES = {
    "coordinator-crash-after-prepare": "after-decision",
    "coordinator-crash-before-log": "after-votes",
}
FAULTS = ("vote-no", *CRASHES, "participant-crash-after-prepare")

SPEC = ScenarioSpec(
    name="txn-2pc",
    title="Two-phase commit across two databases",
    summary="Coordinator processes, their log in ZooKeeper, move money between accounts held by two "
    "PostgreSQL servers with PREPARE TRANSACTION and COMMIT PREPARED; crashes leave branches in doubt, "
    "holding their locks, until recovery.",
    invariant=INVARIANT,
    params=(
        *MONEY[:2],
        Param("coordinators", "2", "coordinator processes (clients take turns)", minimum=1, maximum=4),
        Param(
            "recovery",
            "on",
            "on: a restarted coordinator finishes what its log says; off: nobody resolves the branches",
            choices=("on", "off"),
        ),
        *MONEY[2:],
        Param(
            "lock_timeout_ms",
            "6000",
            "how long a branch waits for a row lock before it votes no",
            minimum=100,
            maximum=120_000,
        ),
        Param(
            "fault_ms",
            "2500",
            "how long a crashed coordinator or server stays down",
            minimum=0,
            maximum=60_000,
        ),
        *LAST,
    ),
    faults=(
        FaultSpec("vote-no", "a transfer asks more than its account holds: that branch votes no, all abort"),
        FaultSpec(
            "coordinator-crash-after-prepare",
            "SIGKILL of the coordinator after the votes and its logged COMMIT: branches in doubt",
        ),
        FaultSpec(
            "coordinator-crash-before-log",
            "SIGKILL of the coordinator after the votes, before its decision is logged: presumed abort",
        ),
        FaultSpec(
            "participant-crash-after-prepare",
            "SIGKILL of the second PostgreSQL server after its yes vote; its branch survives the restart",
            needs_local_cluster=True,
        ),
    ),
    show="each transaction joined with its branches as the databases hold them (in doubt in red, with "
    "age, locks and waiters), lanes for clients, coordinators and both participants",
    sources=(
        "the seed: XA / two-phase commit",
        "PostgreSQL: PREPARE TRANSACTION, COMMIT PREPARED, pg_prepared_xacts",
        "psycopg: two-phase commit protocol support (tpc_begin, tpc_prepare, tpc_commit)",
    ),
    needs=("postgres", "zookeeper"),
)


async def run(ctx: RunContext) -> None:
    if len(ctx.env.postgres) < 1:
        raise ScenarioError("txn-2pc needs PostgreSQL (coordscope up starts two; or give --pg DSN twice)")
    parts = accounts.participants(ctx.run_id, ctx.env.postgres)
    if parts[0].target is parts[1].target and "participant-crash-after-prepare" in ctx.faults:
        raise ScenarioError(
            "participant-crash-after-prepare needs two PostgreSQL servers (one is configured)"
        )
    hosts = ctx.env.zookeeper[0].hosts
    coordinators = [f"coord-{i + 1}" for i in range(ctx.number("coordinators"))]
    clients = [f"client-{i + 1}" for i in range(ctx.number("clients"))]
    await ctx.set_actors([*clients, PROBE, *coordinators, *(p.name for p in parts), NEMESIS])
    await _prepare_participants(ctx, parts)
    ctx.cleanup_znode(hosts, coordscope.two_pc_log(ctx.run_id))
    module, args = coordinator_command(parts, hosts, ctx.choice("recovery"), ctx.number("lock_timeout_ms"))
    services = await asyncio.gather(
        *(ctx.services.start(n, "2pc-coordinator", module, args) for n in coordinators)
    )
    ctx.record(
        RUNNER,
        "info",
        "start",
        note=f"participants {', '.join(f'{p.name} ({p.target.address}, {p.schema})' for p in parts)}; "
        f"coordinators log in {coordscope.two_pc_log(ctx.run_id)} on {hosts}; "
        f"recovery={ctx.choice('recovery')}",
    )
    lab = _Lab(ctx, parts, services, ctx.closing(Http()))
    plan = FaultPlan(ctx.number("fault_at"), list(ctx.faults), actor_faults=FAULTS)
    work = [lab.client(c, share, plan) for c, share in zip(clients, shares(ctx, clients), strict=True)]
    await with_helpers(ctx, plan.arm, work)
    await asyncio.gather(*lab.background)
    ctx.record(RUNNER, "info", "drain", note="the coordinators finish what they are doing, then stop")
    await ctx.services.stop_all(timeout=ctx.number("lock_timeout_ms") / 1000 + 5)
    await _read_participants(ctx, parts)
    await lab.table()


def coordinator_command(
    parts: list[Participant], zk_hosts: str, recovery: str, lock_timeout_ms: int
) -> tuple[str, list[str]]:
    """A coordinator process's module and arguments (the run's and the benchmark's alike)."""
    return "scenarios.transactions.coordinator", [
        "--participants", json.dumps([p.describe() for p in parts]), "--zk", zk_hosts,
        "--recovery", recovery, "--lock-timeout-ms", str(lock_timeout_ms),
    ]  # fmt: skip


async def _prepare_participants(ctx: RunContext, parts: list[Participant]) -> None:
    for p in parts:
        async with await connect(p.target, autocommit=True) as conn:
            cur = await conn.execute("SELECT current_setting('max_prepared_transactions')::int")
            row = await cur.fetchone()
            most = int(str(row[0])) if row else 0
            if most < 2:
                raise ScenarioError(
                    f"txn-2pc needs max_prepared_transactions ≥ 2 on {p.target.address} (it is {most}): "
                    "PostgreSQL refuses PREPARE TRANSACTION otherwise"
                )
        ctx.cleanup_prepared(p.target, coordscope.branch_gid_prefix(ctx.run_id))
    await seed(ctx, parts, accounts.TWO_PC_DDL, tcc=False)


class _Lab(Desk):
    """The run's side: clients, the probe, and the faults at their protocol points."""

    def __init__(
        self, ctx: RunContext, parts: list[Participant], services: list[Service], http: Http
    ) -> None:
        super().__init__(ctx, parts, http)
        self.services = services
        self.turn: Iterator[Service] = itertools.cycle(services)
        self.background: list[asyncio.Task[None]] = []
        self.timeout_s = ctx.number("lock_timeout_ms") / 1000 + ctx.number("fault_ms") / 1000 + 15

    async def client(self, actor: str, share: list[int], plan: FaultPlan) -> None:
        for n in share:
            if self.ctx.stopping.is_set():
                return
            plan.step()
            fault = plan.take()
            service = next(self.turn)
            if fault == "vote-no":
                bank = self.ctx.number("balance") * len(self.ids) * len(self.parts)
                t = self.transfer(n + 1, amount=bank + 1)
                self.ctx.record(
                    NEMESIS, "info", "fault", value=fault, note=f"{t.txn} asks {t.amount}: more than the bank"
                )
                await self.send(actor, service, t)
                self.ctx.record(NEMESIS, "info", "heal", value=fault)
            elif fault in CRASHES:
                await self.coordinator_crash(actor, service, self.transfer(n + 1), fault)
            elif fault == "participant-crash-after-prepare":
                await self.participant_crash(actor, service, self.transfer(n + 1), fault)
            else:
                await self.send(actor, service, self.transfer(n + 1))
            await self.table()

    async def send(self, actor: str, service: Service, t: Transfer) -> str:
        """Through ``service``, or the next coordinator when it refuses the connection."""
        others = [s for s in self.services if s is not service]
        return await self.ask(actor, [service, *others], t, self.timeout_s, "committed")

    async def arm(self, service: Service, t: Transfer, point: str, action: str) -> None:
        reply = await self.http.post(service, "/_arm", {"txn": t.txn, "point": point, "action": action}, 5)
        if not reply.ok:
            raise ScenarioError(f"could not arm {service.name}: {reply.error or reply.status}")

    async def coordinator_crash(self, actor: str, service: Service, t: Transfer, fault: str) -> None:
        point = CRASHES[fault]
        await self.arm(service, t, point, "crash")
        self.ctx.record(
            NEMESIS, "info", "fault", value=fault, note=f"{service.name} dies {point} of {t.txn} (SIGKILL)"
        )
        await self.send(actor, service, t)
        crashed_at = time.monotonic()
        others = [s for s in self.services if s is not service]
        if others:  # another coordinator's transfer runs into the locks meanwhile
            self.background.append(asyncio.create_task(self.probe(others[0], t, service)))
        if service.proc is not None:
            await asyncio.wait_for(service.proc.wait(), 10)
        await asyncio.sleep(max(0.0, self.ctx.number("fault_ms") / 1000 - (time.monotonic() - crashed_at)))
        await self.ctx.services.restart(service.name)
        how = (
            "recovers from its log"
            if self.ctx.choice("recovery") == "on"
            else "does not recover (recovery=off)"
        )
        self.ctx.record(NEMESIS, "info", "heal", value=fault, note=f"{service.name} restarted: {how}")
        if not others:  # the only coordinator: the transfer after its restart meets them
            self.background.append(asyncio.create_task(self.probe(service, t, service)))

    async def probe(self, via: Service, crashed: Transfer, coordinator: Service) -> None:
        """A transfer from the account a branch in doubt holds locked: it waits on it."""
        t = self.transfer(int(crashed.txn[1:]), source=crashed.source, prefix="p")
        sending = asyncio.create_task(self.send(PROBE, via, t))
        await self.blocked(t, crashed, via, coordinator, sending)
        await sending

    async def blocked(
        self, t: Transfer, crashed: Transfer, via: Service, coordinator: Service, sending: asyncio.Task[str]
    ) -> None:
        """Read from the database who waits on whom while the probe waits: until it is seen
        waiting, or its transfer ends (bounded like the transfer, not by a guess of when it
        reaches the lock: on a loaded machine that took over 5 s)."""
        part = next(p for p in self.parts if p.name == t.source[0])
        gid = coordscope.branch_gid(
            coordscope.two_pc_txn_id(self.ctx.run_id, coordinator.name, crashed.txn), part.name
        )
        async with await connect(part.target, autocommit=True) as conn:
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline and not sending.done():
                cur = await conn.execute(
                    """SELECT w.pid FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid
                        WHERE NOT w.granted AND a.application_name = %s AND w.transactionid IN (
                          SELECT p.transaction FROM pg_prepared_xacts p WHERE p.gid = %s)""",
                    (via.name, gid),
                )
                row = await cur.fetchone()
                if row is not None:
                    self.ctx.record(
                        PROBE, "info", "blocked", key=gid,
                        note=f"{t.txn} (pid {row[0]}, {via.name}) waits for {gid}, in doubt, "
                        f"on {'/'.join(t.source)}",
                        data={"tick": "blocked", "pid": row[0], "gid": gid, "waiter": via.name},
                    )  # fmt: skip
                    return
                await asyncio.sleep(0.05)

    async def participant_crash(self, actor: str, service: Service, t: Transfer, fault: str) -> None:
        victim = self.parts[1]
        await self.arm(service, t, "after-decision", "hold")
        sending = asyncio.create_task(self.send(actor, service, t))
        deadline = time.monotonic() + self.timeout_s
        while t.txn not in await self.held(service) and not sending.done():
            if time.monotonic() > deadline:
                raise ScenarioError(f"{service.name} never reached the decision of {t.txn}")
            await asyncio.sleep(0.05)
        cluster = self.ctx.env.cluster
        assert cluster is not None  # the fault needs the local cluster: refused before the run
        self.ctx.record(
            NEMESIS,
            "info",
            "fault",
            value=fault,
            note=f"SIGKILL {victim.target.id} after it voted yes on {t.txn}",
        )
        await asyncio.to_thread(cluster.kill, victim.target.id)
        self.ctx.record(victim.name, "info", "down", note="SIGKILL", data={"tick": "crash"})
        try:
            await self.http.post(service, "/_release", {"txn": t.txn}, 5)
            await asyncio.sleep(self.ctx.number("fault_ms") / 1000)
        finally:
            await asyncio.to_thread(cluster.restart, victim.target.id)
        self.ctx.record(NEMESIS, "info", "heal", value=fault, note=f"{victim.target.id} restarted")
        await sending

    async def held(self, service: Service) -> list[str]:
        reply = await self.http.get(service, "/_held", 2)
        return [str(x) for x in reply.body.get("held", [])] if reply.ok else []


async def _read_participants(ctx: RunContext, parts: list[Participant]) -> None:
    """What each database holds at the end, into the history the checker judges."""
    prefix = coordscope.branch_gid_prefix(ctx.run_id)
    for p in parts:
        async with await connect(p.target, autocommit=True) as conn:
            held = await accounts.balances(conn, p.schema, tcc=False)
            applied = await accounts.applied(conn, p.schema)
            doubt = await accounts.prepared(conn, prefix)
        total = sum(b for b, _ in held.values())
        ctx.record(
            RUNNER, "ok", "balances", key=p.name, value=str(total),
            note=f"{p.name}: {total} in {len(held)} account(s); {len(applied)} branch(es) applied",
            data={"balances": {a: b for a, (b, _) in held.items()}, "total": total,
                  "applied": {txn: [acct, delta] for txn, (acct, delta) in applied.items()}},
        )  # fmt: skip
        for gid, age_ms, locks in doubt:
            if coordscope.parse_branch_gid(gid) and gid.endswith(":" + p.name):
                ctx.record(
                    RUNNER, "info", "in-doubt", key=gid,
                    note=f"{gid} on {p.name}: PREPARED for {age_ms / 1000:.1f} s, holding {locks} lock(s)",
                    data={"participant": p.name, "age_ms": age_ms, "locks": locks},
                )  # fmt: skip
    ctx.record(RUNNER, "ok", "db-read", note=f"{len(parts)} participant(s) read")


SCENARIO = Scenario(spec=SPEC, run=run, check=check)
