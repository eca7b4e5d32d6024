"""A two-phase commit coordinator: a process of its own, its log in ZooKeeper.

``POST /transfer`` with ``{"txn", "from": [participant, account], "to": [participant,
account], "amount"}`` moves the amount between two accounts held by two PostgreSQL
servers, atomically, as an XA transaction manager does:

1. log the transaction (``PREPARING``, its branches) in ZooKeeper, one znode per
   transaction under ``/coordscope/2pc/<run>/<coordinator>``;
2. phase one: on each participant, in a fixed order (no distributed deadlock: every
   transaction locks the first participant's row first), one round trip: ``BEGIN``, its
   work — the balance change and an ``applied`` row — under ``lock_timeout``, and
   ``PREPARE TRANSACTION <gid>``: a yes vote. A
   branch that fails (insufficient funds, a lock not granted in time, a server gone)
   votes no;
3. log the decision with the votes — ``COMMITTING`` if every branch voted yes, else
   ``ABORTING``: from here on the log is the truth;
4. phase two: ``COMMIT PREPARED`` / ``ROLLBACK PREPARED`` on every branch, retried (a
   participant that crashed keeps its prepared branch through its restart) until done;
5. log ``DONE``.

On start with ``--recovery on`` it finishes what its log says before serving: a
``COMMITTING`` transaction is committed, anything logged without a decision is rolled
back (presumed abort), and so is a prepared branch of ours that the log does not know.
With ``--recovery off`` nobody resolves them: the branches stay prepared, holding
their row locks.

The run arms faults at exact protocol points with ``POST /_arm`` ``{"txn", "point",
"action"}``: at ``after-votes`` (every branch prepared, the decision not logged) or
``after-decision`` (logged, not yet sent), ``crash`` SIGKILLs this process there and
``hold`` waits until ``POST /_release`` (``GET /_held`` lists who waits), while the run
kills a participant.

Everything is narrated: a ``transfer`` span per transaction on the coordinator's lane
with ticks for the decision, and on each participant's lane a ``branch`` span from its
work to its commit or rollback — open for as long as the branch is in doubt.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.interfaces import IAsyncResult
from psycopg import errors as pg_errors
from psycopg import sql
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.kazoo_bridge import KazooBridge
from collectors.layouts import coordscope
from collectors.state import now_ms
from scenarios.kit.database import error_line, prepared_gids
from scenarios.kit.process import ServiceRuntime, parser, run
from scenarios.transactions.participants import (
    Conn,
    Participant,
    abandon,
    close_quietly,
    is_prepared,
)

T = TypeVar("T")
RETRY_S = 0.25
"""How often phase two tries again a participant it cannot reach."""


class VoteNo(Exception):
    """A branch could not prepare: the participant votes no."""


class Coordinator:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.name = rt.name
        self.recovery = args.recovery == "on"
        self.lock_timeout_ms = args.lock_timeout_ms
        self.log_path = coordscope.two_pc_log(rt.run_id, self.name)
        self.participants = {
            p["name"]: Participant(p["name"], p["dsn"], p["schema"], self.name)
            for p in json.loads(args.participants)
        }
        self.zk = KazooClient(hosts=args.zk, timeout=10.0)
        self.armed: dict[str, dict[str, str]] = {}
        self.held: dict[str, asyncio.Event] = {}
        self.in_flight = 0
        self.done = 0
        self.unlogged = 0
        """Log writes not waited for that failed (the detail on the services panel says so)."""

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        self.bridge = KazooBridge(asyncio.get_running_loop())
        await asyncio.to_thread(self.zk.start, 15)
        await asyncio.to_thread(self.zk.ensure_path, self.log_path)
        if self.recovery:
            await self.recover()
        else:
            self.note(self.name, "info", "started", note="recovery off: its log is not read")
        self._detail()

    async def close(self) -> None:
        for p in self.participants.values():
            await p.close()
        await asyncio.to_thread(_stop, self.zk)

    def note(self, actor: str, kind: str, f: str, **kw: Any) -> None:
        """Narrate without a round trip (written within milliseconds, flushed before a crash point)."""
        self.rt.note(actor, kind, f, **kw)

    def _detail(self) -> None:
        self.rt.detail = (
            f"{self.in_flight} in flight, {self.done} done"
            + ("" if self.recovery else "; recovery off")
            + (f"; {self.unlogged} log write(s) failed" if self.unlogged else "")
        )

    # ------------------------------------------------------------------ the log

    def _path(self, txn: str) -> str:
        return f"{self.log_path}/{txn}"

    async def log(self, txn: str, entry: dict[str, Any], create: bool = False, wait: bool = True) -> None:
        """Write the transaction's log entry. Only the decision to commit must be on the log
        before anyone is told (``wait``); the rest is sent without waiting — ZooKeeper
        applies one session's requests in order, so a later write that is waited for
        comes after them. Losing one is harmless: a transaction with no decision on the
        log is presumed aborted, and a DONE not written makes recovery commit again
        branches that are already committed (it finds no such prepared transaction)."""
        entry["since_ms"] = now_ms()
        data = json.dumps(entry, separators=(",", ":")).encode()
        path = self._path(txn)
        sent = self.zk.create_async(path, data) if create else self.zk.set_async(path, data)
        if wait:
            await self.bridge.result(sent)
        else:
            sent.rawlink(self._unlogged)

    def _unlogged(self, result: IAsyncResult) -> None:
        if not result.successful():
            self.unlogged += 1  # kazoo's thread: a counter, nothing else

    # ------------------------------------------------------------------ faults

    async def arm(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.armed[str(body["txn"])] = {"point": str(body["point"]), "action": str(body["action"])}
        return JSONResponse({"armed": body})

    async def held_list(self, request: Request) -> JSONResponse:
        return JSONResponse({"held": sorted(t for t, e in self.held.items() if not e.is_set())})

    async def release(self, request: Request) -> JSONResponse:
        body = await request.json()
        event = self.held.get(str(body["txn"]))
        if event is not None:
            event.set()
        return JSONResponse({"released": event is not None})

    async def _point(self, txn: str, point: str) -> None:
        armed = self.armed.get(txn)
        if armed is None or armed["point"] != point:
            return
        del self.armed[txn]
        if armed["action"] == "crash":
            # its log writes sent so far are in before it dies (a read after them on the session)
            await self.bridge.result(self.zk.exists_async(self._path(txn)))
            await self.rt.crash(txn, f"SIGKILL {point}")
        self.note(self.name, "info", "hold", key=txn, note=f"holds {point} until the run releases it")
        event = self.held.setdefault(txn, asyncio.Event())
        await event.wait()

    # ------------------------------------------------------------------ POST /transfer

    async def transfer(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            txn = str(body["txn"])
            legs = [(str(p), str(a), d) for (p, a), d in ((body["from"], -1), (body["to"], 1))]
            amount = int(body["amount"])
            if any(p not in self.participants for p, _, _ in legs) or "/" in txn or not txn:
                raise ValueError(txn)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {txn, from: [participant, account], to: [...], amount}"}, 400)
        self.rt.served(f"transfer {txn}")
        self.in_flight += 1
        self._detail()
        try:
            outcome, reason = await self.two_phase(txn, legs, amount)
        except Exception as exc:  # the log could not be written: nothing was decided
            outcome, reason = "failed", f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.in_flight -= 1
            self.done += 1
            self._detail()
        return JSONResponse({"txn": txn, "outcome": outcome, "reason": reason})

    async def two_phase(self, txn: str, legs: list[tuple[str, str, int]], amount: int) -> tuple[str, str]:
        txn_id = coordscope.two_pc_txn_id(self.rt.run_id, self.name, txn)
        span = {"span": txn}
        entry: dict[str, Any] = {
            "state": "PREPARING",
            "coordinator": self.name,
            "created_ms": now_ms(),
            "transfer": {
                "from": f"{legs[0][0]}/{legs[0][1]}",
                "to": f"{legs[1][0]}/{legs[1][1]}",
                "amount": amount,
            },
            "branches": [
                {"id": p, "gid": coordscope.branch_gid(txn_id, p), "state": "ACTIVE"} for p, _, _ in legs
            ],
        }
        what = f"{amount} from {entry['transfer']['from']} to {entry['transfer']['to']}"
        self.note(self.name, "invoke", "transfer", key=txn, note=what, data=span)
        await self.log(txn, entry, create=True, wait=False)
        # phase one, in the participants' fixed order
        conns: dict[str, Conn] = {}
        votes: dict[str, str] = {}
        reason = ""
        for p, account, sign in sorted(legs):
            gid = coordscope.branch_gid(txn_id, p)
            self.note(p, "invoke", "branch", key=gid, note=f"{txn}: {account} {sign * amount:+d}", data=span)
            try:
                conns[p] = await self._prepare(p, gid, txn, account, sign * amount)
                votes[p] = "yes"
                self.note(
                    p,
                    "info",
                    "prepared",
                    key=gid,
                    note=f"{txn}: PREPARED, votes yes",
                    data={"tick": "prepared"},
                )
            except VoteNo as exc:
                votes[p] = "no"
                reason = f"{p} voted no: {exc}"
                self.note(
                    p,
                    "fail",
                    "branch",
                    key=gid,
                    note=f"{txn}: votes no ({exc})",
                    data={"tick": "vote-no", **span},
                )
                break  # the others need not even be asked
        await self._point(txn, "after-votes")
        commit = len(votes) == len(legs) and all(v == "yes" for v in votes.values())
        entry["state"] = "COMMITTING" if commit else "ABORTING"
        entry["decision"] = "commit" if commit else "abort"
        for b in entry["branches"]:
            b["vote"] = votes.get(b["id"], "not asked")
            b["state"] = (
                "PREPARED" if votes.get(b["id"]) == "yes" else "ROLLED_BACK" if b["id"] in votes else "ACTIVE"
            )
        await self.log(txn, entry, wait=commit)  # a commit is on the log: from here on it holds
        self.note(
            self.name, "info", "decision", key=txn, value=entry["decision"],
            note=f"{txn}: {entry['state']} (votes {', '.join(f'{p} {v}' for p, v in votes.items())})",
            data={"tick": "decision" if commit else "abort"},
        )  # fmt: skip
        await self._point(txn, "after-decision")
        await asyncio.gather(
            *(
                self._finish(p, coordscope.branch_gid(txn_id, p), txn, commit, conns.get(p))
                for p in votes
                if votes[p] == "yes"
            )
        )
        for b in entry["branches"]:
            b["state"] = ("COMMITTED" if commit else "ROLLED_BACK") if b["id"] in votes else "NOT STARTED"
        entry["state"] = "DONE"
        await self.log(txn, entry, wait=False)
        outcome = "committed" if commit else "aborted"
        self.note(
            self.name,
            "ok" if commit else "fail",
            "transfer",
            key=txn,
            value=outcome,
            note=reason or outcome,
            data=span,
        )
        return outcome, reason

    async def _prepare(self, p: str, gid: str, txn: str, account: str, delta: int) -> Conn:
        """A branch's work and its PREPARE TRANSACTION, in one round trip; VoteNo when it cannot."""
        participant = self.participants[p]
        try:
            conn = await participant.connection()
        except (psycopg.Error, OSError) as exc:
            raise VoteNo(f"unreachable ({error_line(exc)})") from exc
        try:
            cur = await conn.execute(
                _branch_sql(participant.schema, gid, txn, account, delta, self.lock_timeout_ms)
            )
            while cur.statusmessage != "SELECT 1" and cur.nextset():
                pass
            row = await cur.fetchone() if cur.statusmessage == "SELECT 1" else None
        except (psycopg.Error, OSError) as exc:
            await abandon(participant, conn)
            if isinstance(exc, pg_errors.CheckViolation):
                raise VoteNo("insufficient funds") from exc
            if isinstance(exc, pg_errors.LockNotAvailable):
                raise VoteNo(f"a row lock not granted within {self.lock_timeout_ms} ms") from exc
            raise VoteNo(error_line(exc)) from exc
        if not row or not row[0]:  # prepared, but it changed nothing: no such account
            await conn.tpc_rollback(gid)
            await participant.give_back(conn)
            raise VoteNo(f"no account {account}")
        return conn

    async def _finish(self, p: str, gid: str, txn: str, commit: bool, conn: Conn | None) -> None:
        """Phase two on one branch: retried until the participant has it (or never had it)."""
        verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
        participant = self.participants[p]
        failures = 0
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await participant.connection()
                    if failures:
                        still = await is_prepared(conn, gid)
                        self.note(
                            p, "info", "survived", key=gid,
                            note=f"{txn}: back after {failures} failed attempt(s); the branch is "
                            + ("still PREPARED" if still else "no longer prepared"),
                            data={"prepared": still},
                        )  # fmt: skip
                if commit:
                    await conn.tpc_commit(gid)
                else:
                    await conn.tpc_rollback(gid)
                await participant.give_back(conn)
                break
            except pg_errors.UndefinedObject:  # no such prepared transaction: resolved already
                if conn is not None:
                    await abandon(participant, conn)
                break
            except (psycopg.Error, OSError) as exc:
                if conn is not None:
                    await close_quietly(conn)
                conn = None
                failures += 1
                if failures == 1:
                    self.note(
                        p,
                        "info",
                        "unreachable",
                        key=gid,
                        note=f"{txn}: {verb} failed ({error_line(exc)}); retrying",
                    )
                await asyncio.sleep(RETRY_S)
        tick = "commit" if commit else "rollback"
        self.note(
            p, "ok", "branch", key=gid, value=tick, note=f"{txn}: {verb}", data={"tick": tick, "span": txn}
        )

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> None:
        """Finish what the log says, presume abort for the rest (retried until done)."""
        txns = await asyncio.to_thread(self.zk.get_children, self.log_path)
        self.note(self.name, "invoke", "recover", note=f"reads its log: {len(txns)} transaction(s)")
        resolved = 0
        for txn in sorted(txns):
            try:
                raw, _ = await asyncio.to_thread(self.zk.get, self._path(txn))
                entry = json.loads(raw)
            except (NoNodeError, ValueError):
                continue
            if entry.get("state") == "DONE":
                continue
            commit = entry.get("state") == "COMMITTING"
            txn_id = coordscope.two_pc_txn_id(self.rt.run_id, self.name, txn)
            how = "commit (the log's decision)" if commit else "presumed abort (no decision logged)"
            note = f"{txn} was {entry.get('state')}: {how}"
            self.note(self.name, "info", "recover-txn", key=txn, note=note, data={"tick": "recover"})
            branches = [b["id"] for b in entry.get("branches", []) if b.get("id") in self.participants]
            await asyncio.gather(
                *(self._finish(p, coordscope.branch_gid(txn_id, p), txn, commit, None) for p in branches)
            )
            for b in entry.get("branches", []):
                b["state"] = "COMMITTED" if commit else "ROLLED_BACK"
            entry["state"] = "DONE"
            entry["recovered"] = True
            await self.log(txn, entry)
            resolved += 1
        # prepared branches of ours the log does not know (it crashed before logging them)
        prefix = coordscope.branch_gid_prefix(self.rt.run_id, self.name)
        for p, participant in self.participants.items():
            for gid in await self._retrying(functools.partial(prepared_gids, participant.dsn, prefix)):
                txn_id, _ = coordscope.parse_branch_gid(gid) or ("", "")
                txn = txn_id.rpartition("/")[2]
                if txn in txns:
                    continue
                self.note(
                    self.name,
                    "info",
                    "recover-txn",
                    key=txn,
                    note=f"{gid}: not in the log, presumed abort",
                    data={"tick": "recover"},
                )
                await self._finish(p, gid, txn, False, None)
                resolved += 1
        self.note(self.name, "ok", "recover", note=f"{resolved} transaction(s) resolved")

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await step()
            except (psycopg.Error, OSError):
                await asyncio.sleep(RETRY_S)


def _stop(zk: KazooClient) -> None:
    try:
        zk.stop()
        zk.close()
    except Exception:
        pass


def _branch_sql(
    schema: str, gid: str, txn: str, account: str, delta: int, lock_timeout_ms: int
) -> sql.Composed:
    """A branch, sent as one simple query: begin, its work (the balance change and the
    ``applied`` row: 1 when the account exists), and ``PREPARE TRANSACTION``."""
    return sql.SQL(
        "BEGIN; SET LOCAL lock_timeout = {timeout};"
        " WITH u AS (UPDATE {s}.accounts SET balance = balance + {delta} WHERE id = {account} RETURNING id),"
        " i AS (INSERT INTO {s}.applied (txn, account, delta) SELECT {txn}, id, {delta} FROM u RETURNING txn)"
        " SELECT count(*) FROM i; PREPARE TRANSACTION {gid}"
    ).format(
        timeout=sql.Literal(f"{lock_timeout_ms}ms"),
        s=sql.Identifier(schema),
        delta=sql.Literal(delta),
        account=sql.Literal(account),
        txn=sql.Literal(txn),
        gid=sql.Literal(gid),
    )


def main() -> None:
    p = parser("a two-phase commit coordinator logging to ZooKeeper")
    p.add_argument("--participants", required=True, help="JSON [{name, dsn, schema}]")
    p.add_argument("--zk", required=True, help="ZooKeeper connect string")
    p.add_argument("--recovery", choices=("on", "off"), default="on")
    p.add_argument("--lock-timeout-ms", type=int, default=10_000)
    args = p.parse_args()
    rt = ServiceRuntime(args)
    coordinator = Coordinator(rt, args)
    routes = [
        Route("/transfer", coordinator.transfer, methods=["POST"]),
        Route("/_arm", coordinator.arm, methods=["POST"]),
        Route("/_held", coordinator.held_list),
        Route("/_release", coordinator.release, methods=["POST"]),
    ]
    run(rt.serve(routes, on_start=coordinator.start, on_close=coordinator.close))


if __name__ == "__main__":
    main()
