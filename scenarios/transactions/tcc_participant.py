"""A TCC participant: a process of its own in front of one PostgreSQL schema, guarded
by Seata's TCC fence — or not.

``POST /try``, ``/confirm``, ``/cancel`` with ``{"xid", "branch", "account", "amount",
"sign"}`` (``sign`` -1: this branch debits the account, +1: it credits it) run one
phase of a branch, each in one local transaction that also inserts an ``effects`` row
(what it changed), so a phase applied twice shows in the database itself:

- a debit's Try freezes the amount (``available -= a, frozen += a``; 409 when the
  account has less), its Confirm spends what it froze (``frozen -= a``), its Cancel
  releases it (``frozen -= a, available += a``);
- a credit's Try reserves nothing in the balance (only its fence and effects rows say
  it ran), its Confirm credits (``available += a``), its Cancel has nothing to undo.

With ``--fence on``, as Seata's ``TCCFenceHandler`` keeps ``tcc_fence_log``:

- Try inserts ``(xid, branch, TRIED)`` in the same local transaction as its change. A
  row already there — SUSPENDED, left by a Cancel that came first — violates the
  primary key: the Try changes nothing and is refused. This is what stops a *hanging*
  Try, one that arrives after its transaction was cancelled and would freeze funds
  nobody will ever release;
- Confirm and Cancel lock the row (``SELECT … FOR UPDATE``). On TRIED they apply and
  move it to CONFIRMED / CANCELLED; on the state they would set (or SUSPENDED, for a
  Cancel) they do nothing and answer success — a Confirm sent again because its reply
  was lost is not applied twice;
- a Cancel that finds no row is the *empty rollback*: its Try never ran, or has not
  arrived yet. It inserts SUSPENDED and changes nothing.

With ``--fence off`` every call applies: a Confirm sent twice credits twice, a Cancel
whose Try never ran releases money that was never frozen, a Try that arrives after its
Cancel freezes funds for good.

Faults, armed by the run per ``(xid, branch)`` with ``POST /_arm`` ``{"xid", "branch",
"fault", "delay_ms"}``: ``confirm-fails`` (the first two Confirms answer 500 and do
nothing), ``lose-confirm-reply`` (the Confirm applies, then answers 503 as if its reply
were lost), ``drop-try`` (the Try answers 503 and does nothing: it never ran),
``delay-try`` (the Try waits ``delay_ms`` before it does anything, then runs: past the
coordinator's timeout, after its Cancel). ``GET /_busy`` lists the calls in progress,
``<txn>/<branch> <phase>`` (the run waits for a late Try to land before it reads the
database).

Everything is narrated on the participant's lane: ``tried``, ``commit`` (Confirm),
``rollback`` (Cancel), ``suspended`` (empty rollback), ``fenced`` (refused or a no-op by
the fence), ``twice`` (a phase applied again: only without the fence), ``error``.

Error handling: a Cancel's SUSPENDED and a Try's TRIED may race for the same key; the
one that loses gets a unique violation: the Try is refused, the Cancel looks again.
A database error answers 503: the coordinator sends the call again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scenarios.kit.database import Pool, error_line
from scenarios.kit.process import ServiceRuntime, parser, run

POOL = 6
DELTAS: dict[tuple[str, int], tuple[int, int]] = {
    ("try", -1): (-1, 1),  # freeze
    ("confirm", -1): (0, -1),  # spend what was frozen
    ("cancel", -1): (1, -1),  # release it
    ("try", 1): (0, 0),  # a credit reserves nothing in the balance
    ("confirm", 1): (1, 0),
    ("cancel", 1): (0, 0),  # nothing to undo
}
"""(phase, sign) -> (Δavailable, Δfrozen) per unit of the amount."""
FINAL = {"confirm": "CONFIRMED", "cancel": "CANCELLED"}
TICKS = {"try": "tried", "confirm": "commit", "cancel": "rollback"}
FAULT_PHASE = {
    "confirm-fails": "confirm",
    "lose-confirm-reply": "confirm",
    "drop-try": "try",
    "delay-try": "try",
}
CONFIRM_FAILURES = 2
Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Refused(Exception):
    """The phase cannot apply (409): no such account, insufficient funds, the fence."""

    def __init__(self, why: str, fenced: bool = False) -> None:
        super().__init__(why)
        self.fenced = fenced


@dataclass(frozen=True)
class Call:
    phase: str
    xid: str
    branch: str
    account: str
    amount: int
    sign: int
    txn: str
    """The transfer's name (the xid without the run): what the lanes show."""

    def deltas(self) -> tuple[int, int]:
        da, df = DELTAS[(self.phase, self.sign)]
        return da * self.amount, df * self.amount

    def changes(self) -> str:
        da, df = self.deltas()
        parts = [f"{name} {d:+d}" for name, d in (("available", da), ("frozen", df)) if d]
        return f"{self.account} " + (", ".join(parts) if parts else "unchanged")


@dataclass(frozen=True)
class Applied:
    """What a phase did: ``applied``, ``again`` (a phase applied before), ``late`` (a Try
    after its Confirm/Cancel), ``untried`` (a Confirm/Cancel with no Try before it),
    ``suspended`` (empty rollback recorded), ``noop`` (the fence: done already)."""

    result: str
    status: str = ""
    """The fence row's status as found."""


class Participant:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.name: str = args.participant
        self.schema = sql.Identifier(args.schema)
        self.fence = args.fence == "on"
        self.pool = Pool(args.dsn, POOL, rt.name)
        self.armed: dict[tuple[str, str], dict[str, Any]] = {}
        self.busy: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        """How many calls ended how (``applied``, ``noop``...): shown with the service."""

    async def start(self) -> None:
        await self.pool.open()
        self._detail()

    async def close(self) -> None:
        await self.pool.close()

    async def record(self, kind: str, f: str, **kw: Any) -> None:
        await self.rt.record(self.name, kind, f, **kw)

    def _detail(self) -> None:
        done = ", ".join(f"{n} {k}" for k, n in sorted(self.results.items())) or "nothing yet"
        self.rt.detail = f"fence {'on' if self.fence else 'off'}; {done}"

    # ------------------------------------------------------------------ faults

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        fault = str(body["fault"])
        if fault not in FAULT_PHASE:
            return JSONResponse({"error": f"no fault {fault!r}"}, 400)
        armed = {"fault": fault, "delay_ms": int(body.get("delay_ms", 0)), "left": CONFIRM_FAILURES}
        self.armed[(str(body["xid"]), str(body["branch"]))] = armed
        return JSONResponse({"armed": armed})

    async def busy_list(self, request: Request) -> JSONResponse:
        return JSONResponse({"busy": sorted(+self.busy)})

    def _fault(self, call: Call) -> dict[str, Any] | None:
        """The fault armed for this call's branch and phase, used up as it strikes."""
        armed = self.armed.get((call.xid, call.branch))
        if armed is None or FAULT_PHASE[armed["fault"]] != call.phase:
            return None
        armed["left"] -= 1
        if armed["fault"] != "confirm-fails" or armed["left"] <= 0:
            del self.armed[(call.xid, call.branch)]
        return armed

    # ------------------------------------------------------------------ the phases

    async def phase(self, request: Request) -> JSONResponse:
        phase = request.url.path.strip("/")
        try:
            body = await request.json()
            xid = str(body["xid"])
            call = Call(
                phase=phase,
                xid=xid,
                branch=str(body["branch"]),
                account=str(body["account"]),
                amount=int(body["amount"]),
                sign=int(body["sign"]),
                txn=xid.removeprefix(self.rt.run_id + ":"),
            )
            if call.sign not in (-1, 1) or call.amount <= 0:
                raise ValueError(body)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {xid, branch, account, amount > 0, sign ±1}"}, 400)
        self.rt.served(f"{phase} {call.txn}")
        token = f"{call.txn}/{call.branch} {phase}"
        self.busy[token] += 1
        try:
            return await self._phase(call)
        finally:
            self.busy[token] -= 1

    async def _phase(self, call: Call) -> JSONResponse:
        what = call.phase.capitalize()
        fault = self._fault(call) or {}
        kind = str(fault.get("fault", ""))
        delay_ms = int(fault.get("delay_ms", 0))
        if kind == "drop-try":
            await self.record(
                "fail", call.phase, key=call.txn, note=f"{call.txn}: Try dropped (injected): never run here",
                data={"tick": "error", "fault": kind},
            )  # fmt: skip
            return JSONResponse({"error": "Try dropped (injected)"}, 503)
        if kind == "delay-try":
            await self.record(
                "info", "delayed", key=call.txn,
                note=f"{call.txn}: Try held {delay_ms} ms (injected) before it runs",
            )  # fmt: skip
            await asyncio.sleep(delay_ms / 1000)
        if kind == "confirm-fails":
            note = f"{call.txn}: Confirm fails (injected, 500): nothing applied"
            await self.record(
                "fail", call.phase, key=call.txn, note=note, data={"tick": "error", "fault": kind}
            )
            return JSONResponse({"error": "Confirm failed (injected)"}, 500)
        try:
            done = await self._apply(call)
        except Refused as exc:
            await self.record(
                "fail", call.phase, key=call.txn, note=f"{call.txn}: {what} refused: {exc}",
                data={"tick": "fenced" if exc.fenced else "error", "fenced": exc.fenced},
            )  # fmt: skip
            return JSONResponse({"error": str(exc), "fenced": exc.fenced}, 409)
        except (psycopg.Error, OSError) as exc:
            why = error_line(exc)
            note = f"{call.txn}: {what} failed: {why}"
            await self.record("fail", call.phase, key=call.txn, note=note, data={"tick": "error"})
            return JSONResponse({"error": why}, 503)
        self.results[done.result] += 1
        self._detail()
        await self._narrate(call, done)
        if kind == "lose-confirm-reply":
            note = f"{call.txn}: Confirm applied, its reply lost (injected): answers 503"
            await self.record("info", "reply-lost", key=call.txn, note=note, data={"fault": kind})
            return JSONResponse({"error": "reply lost (injected)"}, 503)
        return JSONResponse({"result": done.result, "status": done.status})

    async def _narrate(self, call: Call, done: Applied) -> None:
        what = call.phase.capitalize()
        frozen = call.deltas()[1]
        applied = f"{what}: {call.changes()}"
        if call.phase == "try" and call.sign > 0:
            applied = f"Try: {call.amount} to come to {call.account} (no balance change until Confirm)"
        elif call.phase == "cancel" and call.sign > 0:
            applied = f"Cancel: nothing to undo on {call.account}"
        notes = {
            "applied": (TICKS[call.phase], applied),
            "again": ("twice", f"{what} applied AGAIN: {call.changes()}"),
            "late": ("tried", f"Try after its Confirm/Cancel: {call.changes()}, for good"),
            "untried": (
                TICKS[call.phase],
                f"{what} with no Try before it: {call.changes()}"
                + (f" ({-frozen} never frozen)" if frozen < 0 else ""),
            ),
            "suspended": ("suspended", "Cancel before any Try: SUSPENDED recorded, nothing changed"),
            "noop": ("fenced", f"{what} again: the fence holds {done.status}, nothing done"),
        }
        tick, note = notes[done.result]
        await self.record(
            "ok", call.phase, key=call.txn, value=done.result, note=f"{call.txn}: {note}",
            data={"tick": tick, "result": done.result, "branch": call.branch},
        )  # fmt: skip

    async def _apply(self, call: Call) -> Applied:
        async with self.pool.connection() as conn:
            for _ in range(3):
                try:
                    async with conn.transaction():
                        return await (self._fenced(conn, call) if self.fence else self._change(conn, call))
                except pg_errors.UniqueViolation:
                    if call.phase == "try":  # a row was there first: its Cancel came before it
                        status = await self._status(conn, call, lock=False)
                        raise Refused(f"the fence holds {status or 'a row'} for it", fenced=True) from None
                    # a Cancel's SUSPENDED raced a Try's TRIED and lost: look again
            raise Refused("the fence row kept changing")

    async def _fenced(self, conn: Conn, call: Call) -> Applied:
        """One phase behind the fence (in the caller's local transaction)."""
        if call.phase == "try":
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.tcc_fence_log (xid, branch_id, action_name, status) "
                    "VALUES (%s, %s, %s, 'TRIED')"
                ).format(self.schema),
                (call.xid, call.branch, self._action(call)),
            )
            return await self._change(conn, call)
        status = await self._status(conn, call, lock=True)
        if status is None:
            if call.phase == "confirm":
                raise Refused("no Try recorded here: nothing to confirm", fenced=True)
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.tcc_fence_log (xid, branch_id, action_name, status) "
                    "VALUES (%s, %s, %s, 'SUSPENDED')"
                ).format(self.schema),
                (call.xid, call.branch, self._action(call)),
            )
            return Applied("suspended", "SUSPENDED")
        if status == FINAL[call.phase] or (call.phase == "cancel" and status == "SUSPENDED"):
            return Applied("noop", status)
        if status != "TRIED":
            raise Refused(f"the fence holds {status}", fenced=True)
        done = await self._change(conn, call)
        await conn.execute(
            sql.SQL(
                "UPDATE {}.tcc_fence_log SET status = %s, gmt_modified = now() "
                "WHERE xid = %s AND branch_id = %s"
            ).format(self.schema),
            (FINAL[call.phase], call.xid, call.branch),
        )
        return Applied(done.result, FINAL[call.phase])

    async def _change(self, conn: Conn, call: Call) -> Applied:
        """The phase's change to the account and its ``effects`` row (the caller's
        transaction); how it stands against the phases applied before it on this branch."""
        da, df = call.deltas()
        freezes = call.phase == "try" and call.sign < 0  # only what is there can be frozen
        cur = await conn.execute(
            sql.SQL(
                "UPDATE {}.accounts SET available = available + %s, frozen = frozen + %s WHERE id = %s"
                + (" AND available >= %s" if freezes else "")
            ).format(self.schema),
            (da, df, call.account, *([call.amount] if freezes else [])),
        )
        if cur.rowcount != 1:
            exists = await conn.execute(
                sql.SQL("SELECT 1 FROM {}.accounts WHERE id = %s").format(self.schema), (call.account,)
            )
            raise Refused("insufficient funds" if await exists.fetchone() else f"no account {call.account}")
        cur = await conn.execute(
            sql.SQL("SELECT phase FROM {}.effects WHERE xid = %s AND branch_id = %s ORDER BY n").format(
                self.schema
            ),
            (call.xid, call.branch),
        )
        before = [str(p) for (p,) in await cur.fetchall()]
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.effects (xid, branch_id, phase, account, available, frozen) "
                "VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(self.schema),
            (call.xid, call.branch, call.phase, call.account, da, df),
        )
        if call.phase in before:
            return Applied("again")
        if call.phase == "try" and any(p in before for p in FINAL):
            return Applied("late")
        if call.phase != "try" and "try" not in before:
            return Applied("untried")
        return Applied("applied")

    async def _status(self, conn: Conn, call: Call, lock: bool) -> str | None:
        cur = await conn.execute(
            sql.SQL("SELECT status FROM {}.tcc_fence_log WHERE xid = %s AND branch_id = %s").format(
                self.schema
            )
            + sql.SQL(" FOR UPDATE" if lock else ""),
            (call.xid, call.branch),
        )
        row = await cur.fetchone()
        return str(row[0]) if row else None

    def _action(self, call: Call) -> str:
        return "debit" if call.sign < 0 else "credit"


def main() -> None:
    p = parser("a TCC participant in front of one PostgreSQL schema, with or without Seata's fence")
    p.add_argument("--dsn", required=True, help="the participant's PostgreSQL (conninfo)")
    p.add_argument("--schema", required=True)
    p.add_argument("--participant", required=True, help="its name: the lane it narrates on")
    p.add_argument("--fence", choices=("on", "off"), default="on")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    participant = Participant(rt, args)
    routes = [
        Route("/try", participant.phase, methods=["POST"]),
        Route("/confirm", participant.phase, methods=["POST"]),
        Route("/cancel", participant.phase, methods=["POST"]),
        Route("/_arm", participant.arm, methods=["POST"]),
        Route("/_busy", participant.busy_list),
    ]
    run(rt.serve(routes, on_start=participant.start, on_close=participant.close))


if __name__ == "__main__":
    main()
