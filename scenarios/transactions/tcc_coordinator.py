"""A TCC coordinator: a process of its own, where each transaction stands kept in Redis.

``POST /transfer`` with ``{"txn", "from": [participant, account], "to": [participant,
account], "amount"}`` moves the amount between two accounts held by two participants
(:mod:`scenarios.transactions.tcc_participant`), as Seata's TCC mode does:

1. the transaction's hash ``coordscope:txn:<run>:<txn>`` says TRYING, with its two
   branches (the debit and the credit);
2. Try both branches at once, each bounded by ``try_timeout_ms``: the debit freezes
   the amount, the credit reserves it;
3. every Try answered OK: CONFIRMING, and Confirm each branch. Anything else — a
   refusal, an error, no answer in time: CANCELLING, and Cancel each branch, *also*
   the one whose Try failed or never answered: it may have run (its reply lost), may
   never run (an empty rollback), or may yet arrive (a hanging Try). Only the
   participant can tell which, and its fence does;
4. CONFIRMED or CANCELLED.

Error handling: a Confirm or a Cancel that fails or gets no answer is sent again every
200 ms (until it succeeds, for at most 30 s): an unanswered one may have been applied
— its reply lost — so the participant must make both idempotent (the fence again). A
refusal (409) is final: the participant's fence says the branch ended otherwise. A
branch still unanswered after 30 s is left to an operator: the hash stays CONFIRMING
or CANCELLING and the reply says ``unfinished``.

Narrated on its lane: a ``transfer`` span per transaction with a ``decision`` (Confirm)
or ``abort`` (Cancel) tick, each retry; on each participant's lane a ``branch`` span
from its Try to its Confirm or Cancel (what the participant did is the participant's
own narration).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collectors.layouts import coordscope
from collectors.state import now_ms
from collectors.targets import RedisTarget
from scenarios.kit.clients import redis_client
from scenarios.kit.http import Http, Reply
from scenarios.kit.process import ServiceRuntime, parser, run

RETRY_EVERY_S = 0.2
RETRY_FOR_S = 30.0
PHASE_TIMEOUT_S = 5.0
"""How long a Confirm or Cancel may take before it counts as unanswered (and is sent again)."""
DONE = {"confirm": "CONFIRMED", "cancel": "CANCELLED"}


@dataclass
class Branch:
    participant: str
    account: str
    sign: int
    """-1: debit, +1: credit."""
    state: str = "TRYING"
    detail: str = ""
    try_failed: str = ""
    """Why its Try failed (nothing when it went through)."""

    def body(self, xid: str, amount: int) -> dict[str, Any]:
        return {
            "xid": xid,
            "branch": self.participant,
            "account": self.account,
            "amount": amount,
            "sign": self.sign,
        }

    def show(self) -> dict[str, str]:
        return {"id": self.participant, "state": self.state, "detail": self.detail}


@dataclass
class Transaction:
    txn: str
    xid: str
    amount: int
    branches: list[Branch]
    state: str = "TRYING"
    since_ms: int = 0

    @property
    def note(self) -> str:
        debit, credit = self.branches
        return (
            f"{self.amount} from {debit.participant}/{debit.account} to {credit.participant}/{credit.account}"
        )


class Coordinator:
    def __init__(self, rt: ServiceRuntime, args: Any) -> None:
        self.rt = rt
        self.name = rt.name
        self.addresses: dict[str, str] = {p["name"]: p["address"] for p in json.loads(args.participants)}
        self.try_timeout_ms: int = args.try_timeout_ms
        self.protocol = f"TCC (fence {args.fence})"
        self.redis = redis_client(RedisTarget.from_url(args.redis))
        self.http = Http()
        self.in_flight = 0
        self.outcomes: dict[str, int] = {}

    async def close(self) -> None:
        await self.http.aclose()
        await self.redis.aclose()

    async def record(self, actor: str, kind: str, f: str, **kw: Any) -> None:
        await self.rt.record(actor, kind, f, **kw)

    def _detail(self) -> None:
        done = ", ".join(f"{n} {o}" for o, n in sorted(self.outcomes.items()))
        self.rt.detail = f"{self.in_flight} in flight" + (f"; {done}" if done else "")

    async def show(self, t: Transaction, state: str = "") -> None:
        """Where the transaction stands, in its hash (what the transactions panel shows)."""
        if state and state != t.state:
            t.state, t.since_ms = state, now_ms()
        fields = {
            "protocol": self.protocol,
            "state": t.state,
            "since_ms": str(t.since_ms),
            "note": t.note,
            "branches": json.dumps([b.show() for b in t.branches]),
        }
        try:
            await self.redis.hset(coordscope.txn_key(t.xid), mapping=fields)  # type: ignore[arg-type]
        except (redis_errors.RedisError, OSError) as exc:  # shown late, never decisive: go on
            await self.record(self.name, "info", "unshown", key=t.txn, note=f"{t.state} not written: {exc}")

    # ------------------------------------------------------------------ POST /transfer

    async def transfer(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            txn = str(body["txn"])
            (p1, a1), (p2, a2) = body["from"], body["to"]
            branches = [Branch(str(p1), str(a1), -1), Branch(str(p2), str(a2), 1)]
            amount = int(body["amount"])
            if any(b.participant not in self.addresses for b in branches) or not txn or amount <= 0:
                raise ValueError(txn)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send {txn, from: [participant, account], to: [...], amount}"}, 400)
        self.rt.served(f"transfer {txn}")
        self.in_flight += 1
        self._detail()
        t = Transaction(txn, f"{self.rt.run_id}:{txn}", amount, branches, since_ms=now_ms())
        try:
            outcome, reason = await self.tcc(t)
        except Exception as exc:  # the history could not be written: say so, decide nothing more
            outcome, reason = "failed", f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.in_flight -= 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self._detail()
        return JSONResponse({"txn": txn, "outcome": outcome, "reason": reason})

    async def tcc(self, t: Transaction) -> tuple[str, str]:
        span = {"span": t.txn}
        await self.record(self.name, "invoke", "transfer", key=t.txn, note=t.note, data=span)
        await self.show(t)
        for b in t.branches:
            note = f"{t.txn}: Try {b.account} {b.sign * t.amount:+d}"
            await self.record(b.participant, "invoke", "branch", key=t.txn, note=note, data=span)
        failed = [why for why in await asyncio.gather(*(self.try_branch(t, b) for b in t.branches)) if why]
        phase = "cancel" if failed else "confirm"
        await self.record(
            self.name, "info", "decision", key=t.txn, value=phase,
            note=f"{t.txn}: " + (f"Cancel ({'; '.join(failed)})" if failed else "every Try done: Confirm"),
            data={"tick": "abort" if failed else "decision"},
        )  # fmt: skip
        await self.show(t, "CANCELLING" if failed else "CONFIRMING")
        unfinished = [
            why for why in await asyncio.gather(*(self.finish(t, b, phase) for b in t.branches)) if why
        ]
        if not unfinished:
            await self.show(t, DONE[phase])
        outcome = "unfinished" if unfinished else DONE[phase].lower()
        reason = "; ".join(failed + unfinished)
        await self.record(
            self.name, "ok" if outcome == "confirmed" else "fail", "transfer", key=t.txn, value=outcome,
            note=reason or outcome, data=span,
        )  # fmt: skip
        return outcome, reason

    async def try_branch(self, t: Transaction, b: Branch) -> str:
        """Phase one on a branch: why it failed, or nothing."""
        reply = await self.http.post(
            self.addresses[b.participant], "/try", b.body(t.xid, t.amount), self.try_timeout_ms / 1000
        )
        if reply.ok:
            b.state = "TRIED"
            return ""
        b.try_failed = _why(reply, self.try_timeout_ms)
        b.state, b.detail = "TRY FAILED", b.try_failed
        why = f"{b.participant}: {b.try_failed}"
        await self.record(
            self.name, "info", "try-failed", key=t.txn, note=f"{t.txn}: Try on {why}",
            data={"branch": b.participant, "tick": "timeout" if reply.error == "timeout" else "error"},
        )  # fmt: skip
        return why

    async def finish(self, t: Transaction, b: Branch, phase: str) -> str:
        """Confirm or Cancel one branch, sent again until it is done (bounded): why it is
        not done, or nothing."""
        what = phase.capitalize()
        b.state = "CONFIRMING" if phase == "confirm" else "CANCELLING"
        deadline = time.monotonic() + RETRY_FOR_S
        span = {"span": t.txn}
        for attempt in itertools.count(1):
            reply = await self.http.post(
                self.addresses[b.participant], f"/{phase}", b.body(t.xid, t.amount), PHASE_TIMEOUT_S
            )
            if reply.ok:
                break
            why = _why(reply, int(PHASE_TIMEOUT_S * 1000))
            if reply.status == 409:  # the fence says it ended otherwise: sending it again changes nothing
                b.state, b.detail = "REFUSED", f"{what}: {why}"
                await self.show(t)
                await self.record(
                    b.participant, "fail", "branch", key=t.txn, value=phase,
                    note=f"{t.txn}: {what} refused: {why}", data=span,
                )  # fmt: skip
                return f"{b.participant} refused the {what}: {why}"
            b.detail = f"{what} attempt {attempt}: {why}"
            await self.show(t)
            late = time.monotonic() > deadline
            await self.record(
                self.name, "info", "retry", key=t.txn, value=phase,
                note=f"{t.txn}: {what} on {b.participant} failed ({why}): "
                + ("gives up" if late else f"again in {RETRY_EVERY_S * 1000:.0f} ms"),
                data={"branch": b.participant, "phase": phase, "attempt": attempt},
            )  # fmt: skip
            if late:
                await self.record(b.participant, "info", "branch", key=t.txn, value="unfinished", data=span)
                return f"{b.participant}: {what} unanswered for {RETRY_FOR_S:.0f} s ({why})"
            await asyncio.sleep(RETRY_EVERY_S)
        b.state = DONE[phase]
        b.detail = "; ".join(
            [
                *([f"Try: {b.try_failed}"] if b.try_failed else []),
                *(["empty rollback: SUSPENDED"] if reply.body.get("result") == "suspended" else []),
                *([f"{what} sent {attempt} times"] if attempt > 1 else []),
            ]
        )
        await self.show(t)
        await self.record(
            b.participant, "ok", "branch", key=t.txn, value=DONE[phase].lower(),
            note=f"{t.txn}: {DONE[phase]}" + (f" ({b.detail})" if b.detail else ""), data=span,
        )  # fmt: skip
        return ""


def _why(reply: Reply, timeout_ms: int) -> str:
    if reply.status is None:
        return (
            f"no answer within {timeout_ms} ms" if reply.error == "timeout" else f"no answer ({reply.error})"
        )
    return f"{reply.status} {reply.body.get('error') or ''}".strip()


def main() -> None:
    p = parser("a TCC coordinator keeping where each transaction stands in Redis")
    p.add_argument("--participants", required=True, help="JSON [{name, address}] of the participants")
    p.add_argument("--redis", required=True, help="where the transactions' hashes go (Redis URL)")
    p.add_argument("--try-timeout-ms", type=int, default=800)
    p.add_argument("--fence", choices=("on", "off"), default="on", help="the participants' (shown only)")
    args = p.parse_args()
    rt = ServiceRuntime(args)
    coordinator = Coordinator(rt, args)
    routes = [Route("/transfer", coordinator.transfer, methods=["POST"])]
    run(rt.serve(routes, on_close=coordinator.close))


if __name__ == "__main__":
    main()
