"""The txn-best-effort checker: what A's and B's databases and the notifications' hashes
hold at the end, read into the history.

Best effort promises nothing about the notification itself — it may come late, many
times or never — so the invariant is about the effect: every payment A holds is
applied in B exactly once (with its amount), and B holds nothing A does not, whether
the notification brought it or B's reconciliation found it. The notifications' final
states and the services' narration explain what happened: a payment missing from B
is named with its notification's fate (GAVE_UP after n attempts, reconciliation off),
a payment applied twice with the narration of the second time.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collectors.layouts import messaging
from collectors.runs import RUNNER, Op, Verdict
from scenarios.kit.problems import Problem, step_of, violated

PRODUCER, NOTIFIER, RECEIVER = "A", "notifier", "B"
INVARIANT = (
    "B ends consistent with A — every payment A holds applied in B exactly once, by notification "
    "or reconciliation, and nothing A does not hold — and never applies one twice"
)


@dataclass(frozen=True)
class Stores:
    """What the run read at its end."""

    orders: dict[str, int]
    """A's payments: id -> amount."""
    applied: dict[str, tuple[int, str]]
    """B's applied marks: id -> (amount, via)."""
    effects: dict[str, list[tuple[int, str]]]
    """B's effects per id, in order: (amount, via)."""
    notes: dict[str, dict[str, str]]
    """Each notification's hash."""


def _read(ops: Sequence[Op]) -> Stores:
    def one(f: str) -> dict[str, Any]:
        found = [op for op in ops if op.actor == RUNNER and op.f == f and op.kind == "ok"]
        if not found:
            raise ValueError(f"the history has no read of {f}")
        return found[-1].data

    if not any(op.actor == RUNNER and op.f == "db-read" for op in ops):
        raise ValueError("the history has no read of the stores (A's orders, B's rows, the notifications)")
    effects: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, amount, via, *_ in one("receiver").get("effects", []):
        effects[str(i)].append((int(amount), str(via)))
    return Stores(
        orders={str(i): int(a) for i, a, *_ in one("orders").get("orders", [])},
        applied={str(i): (int(a), str(v)) for i, a, v, *_ in one("receiver").get("applied", [])},
        effects=dict(effects),
        notes={
            str(k): {str(f): str(v) for f, v in h.items()}
            for k, h in one("notifications").get("notifications", {}).items()
        },
    )


def _vias(vias: Sequence[str]) -> str:
    """``notify#1``, ``notify#2``, ``reconcile`` -> "notification attempts 1 and 2, reconciliation"."""
    attempts = [v.removeprefix("notify#") for v in vias if v.startswith("notify#")]
    out = []
    if attempts:
        listed = ", ".join(attempts[:-1]) + f" and {attempts[-1]}" if len(attempts) > 1 else attempts[0]
        out.append(f"notification attempt{'s' if len(attempts) > 1 else ''} {listed}")
    out += ["reconciliation" for v in vias if v == "reconcile"]
    out += [v for v in vias if v != "reconcile" and not v.startswith("notify#")]
    return ", ".join(out)


def _answers(ops: Sequence[Op], msg: str) -> str:
    """The notifier's attempts at ``msg``, folded: "refused ×4 → success"."""
    said = [
        str(op.data["answer"])
        for op in ops
        if op.actor == NOTIFIER and op.data.get("msg") == msg and "answer" in op.data
    ]
    folded: list[list[Any]] = []
    for a in said:
        if folded and folded[-1][0] == a:
            folded[-1][1] += 1
        else:
            folded.append([a, 1])
    return " → ".join(a + (f" ×{n}" if n > 1 else "") for a, n in folded)


def _fate(note: Mapping[str, str] | None, reconcile: str) -> str:
    if note is None:
        return "no notification was ever made for it"
    state, n, of, last = (
        note.get("state", "?"),
        note.get("attempt", "?"),
        note.get("attempts", "?"),
        note.get("last", ""),
    )
    said = f"its notification {state} after {n}/{of} attempt(s)" + (f" (last: {last})" if last else "")
    if state == messaging.GAVE_UP:
        said += ", and reconciliation is off" if reconcile == "off" else ", and reconciliation never found it"
    elif state == messaging.NOTIFYING:
        said += ": still on its ladder when the run ended"
    return said


def _problems(ops: Sequence[Op], s: Stores, reconcile: str) -> list[Problem]:
    out: list[Problem] = []
    for msg, amount in s.orders.items():
        got = s.effects.get(msg, [])
        if not got:
            marked = " (its applied mark is there, its effect is not)" if msg in s.applied else ""
            out.append(
                Problem(
                    f"{msg} ({amount}) is paid in A and was never applied in B{marked}: "
                    + _fate(s.notes.get(msg), reconcile),
                    msg,
                    (RECEIVER, NOTIFIER),
                    step_of(ops, msg, "gave-up", actor=NOTIFIER)
                    or step_of(ops, msg, "notify", actor=NOTIFIER, last=True),
                )
            )
            continue
        if len(got) > 1:
            times = {2: "twice"}.get(len(got), f"{len(got)} times")
            out.append(
                Problem(
                    f"{msg} applied {times} in B (+{got[0][0]} each time, by {_vias([v for _, v in got])})",
                    msg,
                    (RECEIVER,),
                    step_of(ops, msg, "twice", actor=RECEIVER),
                )
            )
        wrong = [a for a, _ in got if a != amount]
        if wrong:
            out.append(Problem(f"{msg} applied in B with {wrong[0]}, A holds {amount}", msg, (RECEIVER,)))
    for msg, got in s.effects.items():
        if msg not in s.orders:
            out.append(
                Problem(
                    f"B applied {msg} (+{got[0][0]}, by {got[0][1]}), a payment A does not hold",
                    msg,
                    (RECEIVER,),
                    step_of(ops, msg, "applied", "reconciled", "twice", actor=RECEIVER),
                )
            )
    return out


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """Judge what the stores hold at the end (A's ``orders``, B's ``applied`` and ``effects``,
    each notification's hash)."""
    s = _read(ops)
    reconcile = str(params.get("reconcile", "on"))
    problems = _problems(ops, s, reconcile)
    findings = _findings(ops, s, reconcile)
    if problems:
        return violated(INVARIANT, problems, findings)
    via = Counter("reconciliation" if v == "reconcile" else "notification" for _, v in s.applied.values())
    skipped = sum(1 for op in ops if op.actor == RECEIVER and op.data.get("tick") == "duplicate")
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {len(s.orders)} payment(s) in A, each applied exactly once in B "
        f"({via['notification']} by notification, {via['reconciliation']} by reconciliation); "
        f"{skipped} repeat(s) skipped by B's dedup",
        findings=tuple(findings),
    )


def _ids(msgs: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(msgs[:limit])
    return shown + (f" and {len(msgs) - limit} more" if len(msgs) > limit else "")


def _findings(ops: Sequence[Op], s: Stores, reconcile: str) -> list[str]:
    out: list[str] = []
    states = Counter(n.get("state", "?") for n in s.notes.values())
    order = {st: i for i, st in enumerate(messaging.NOTIFICATION_STATES)}
    out.append(
        "notifications: "
        + (
            ", ".join(f"{n} {st}" for st, n in sorted(states.items(), key=lambda kv: order.get(kv[0], 9)))
            or "none"
        )
    )
    for msg in [*s.orders, *(m for m in s.notes if m not in s.orders)]:
        n = s.notes.get(msg)
        if n is None or (n.get("state") == messaging.ACKED and n.get("attempt") == "1"):
            continue
        line = f"{msg}: {n.get('state')} after {n.get('attempt')}/{n.get('attempts')} attempt(s)"
        answers = _answers(ops, msg)
        line += f" ({answers})" if answers else ""
        if n.get("state") == messaging.RECONCILED:
            line += f", then {n.get('last', 'reconciled')}"
        out.append(line)
    dups = [
        str(op.data.get("msg")) for op in ops if op.actor == RECEIVER and op.data.get("tick") == "duplicate"
    ]
    if dups:
        counted = Counter(dups)
        out.append(
            f"B skipped {len(dups)} repeat(s) its applied table already had: "
            + _ids([f"{m} ×{n}" if n > 1 else m for m, n in counted.items()])
        )
    reconciled = [m for m, (_, via) in s.applied.items() if via == "reconcile"]
    if reconciled:
        out.append(f"applied by B's reconciliation (A's query): {_ids(reconciled)}")
    gave_up = [m for m, n in s.notes.items() if n.get("state") == messaging.GAVE_UP]
    if gave_up and reconcile == "on":
        out.append(f"GAVE_UP and never marked RECONCILED: {_ids(gave_up)}")
    lost = [m for m in s.orders if m not in s.notes]
    if lost:
        out.append(f"paid in A with no notification made: {_ids(lost)}")
    return out
