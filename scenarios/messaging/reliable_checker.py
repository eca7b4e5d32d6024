"""The txn-reliable-message checker: what the stores hold at the end, read into the history.

The run reads, once every actor is done: A's database (each order committed, and each
order's local transaction record), the broker's message hashes in Redis (state, checks
made, the producer's last answer), B's database (how many effect rows each message
has) and B's marks. A message must be applied by B if and only if A committed its
order, and at most once:

- committed by A, never applied: lost — the broker discarded it (its checks never got
  COMMIT), rolled it back, still holds it HALF, or delivered it and B never applied it;
- applied by B, never committed by A: delivered for an order that does not exist;
- applied more than once: a redelivery applied again (no mark, or the window between
  the effect and its mark).

The narration gives each problem its moment and its actors: the broker's ``discarded``,
B's ``twice`` or ``applied``, A's ``committed`` (ops carry the message in ``data.msg``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collectors.runs import RUNNER, Op, Verdict
from scenarios.kit.problems import Problem, step_of, violated

PRODUCER, BROKER, CONSUMER = "A", "broker", "B"
INVARIANT = "B applies a message if and only if A committed its order, and at most once"
TIMES = {2: "twice", 3: "three times"}


@dataclass(frozen=True)
class Stores:
    """What the stores held at the end, as the run read them into the history."""

    committed: dict[str, int]
    """A's ``orders``: message id -> amount."""
    records: dict[str, str]
    """A's ``local_txns``: message id -> BEGUN, COMMITTED or ROLLED_BACK."""
    messages: dict[str, dict[str, Any]]
    """The broker's hashes: message id -> state, checks, max_checks, last_answer."""
    effects: dict[str, int]
    """B's ``effects``: message id -> rows."""
    marks: set[str]

    @classmethod
    def read(cls, ops: Sequence[Op]) -> Stores:
        if not any(op.actor == RUNNER and op.f == "stores-read" for op in ops):
            raise ValueError("the history has no read of the stores")
        data = {op.f: op.data for op in ops if op.actor == RUNNER and op.kind == "ok"}
        a, broker, b = data.get("producer-db", {}), data.get("broker-read", {}), data.get("consumer-db", {})
        return cls(
            committed={str(k): int(v) for k, v in dict(a.get("orders", {})).items()},
            records={str(k): str(v) for k, v in dict(a.get("records", {})).items()},
            messages={str(k): dict(v) for k, v in dict(broker.get("messages", {})).items()},
            effects={str(k): int(v) for k, v in dict(b.get("effects", {})).items()},
            marks={str(m) for m in b.get("marks", [])},
        )

    def ids(self) -> list[str]:
        found = {*self.committed, *self.records, *self.messages, *self.effects}
        return sorted(found, key=lambda m: (len(m), m))


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """Judge what the stores held at the end (A's orders, the broker's messages, B's effects)."""
    stores = Stores.read(ops)
    problems: list[Problem] = []
    for msg in stores.ids():
        problems += _judge(ops, stores, msg)
    findings = _findings(ops, stores)
    if problems:
        return violated(INVARIANT, problems, findings)
    rolled = [m for m in stores.ids() if m not in stores.committed]
    by_check = [m for m in stores.committed if _decided_by_check(ops, m)]
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {len(stores.committed)} order(s) committed by A, each applied once by B; "
        f"{len(rolled)} not committed, none applied"
        + (f"; {len(by_check)} delivered only by a check-back ({', '.join(by_check)})" if by_check else ""),
        findings=tuple(findings),
    )


def _judge(ops: Sequence[Op], stores: Stores, msg: str) -> list[Problem]:
    committed = msg in stores.committed
    rows = stores.effects.get(msg, 0)
    held = stores.messages.get(msg, {})
    out = []
    if committed and rows == 0:
        out.append(
            Problem(
                f"A committed order {msg} but B never applied it: {_lost(held)}",
                msg,
                (PRODUCER, BROKER),
                step_of(ops, msg, "discarded", actor=BROKER)
                or step_of(ops, msg, "committed", actor=PRODUCER),
            )
        )
    if not committed and rows:
        record = stores.records.get(msg)
        out.append(
            Problem(
                f"B applied {msg} but A never committed it (its record: {record or 'none'}; the broker: "
                f"{held.get('state') or 'no message'})",
                msg,
                (CONSUMER, BROKER),
                step_of(ops, msg, "applied", actor=CONSUMER),
            )
        )
    if rows > 1:
        out.append(
            Problem(
                f"B applied {msg} {TIMES.get(rows, f'{rows} times')}: redelivered, it was applied again — "
                + ("its mark did not stop it" if msg in stores.marks else "no mark stopped it"),
                msg,
                (CONSUMER,),
                step_of(ops, msg, "twice", actor=CONSUMER)
                or step_of(ops, msg, "applied", actor=CONSUMER, last=True),
            )
        )
    return out


def _lost(held: Mapping[str, Any]) -> str:
    state, checks, last = held.get("state"), held.get("checks", 0), held.get("last_answer") or "none"
    if not state:
        return "the broker never stored it"
    if state == "DISCARDED":
        return f"the broker discarded it after {checks} check(s), none answered COMMIT (last answer: {last})"
    if state == "HALF":
        return f"it is still HALF at the end, undecided after {checks} check(s) (last answer: {last})"
    if state == "ROLLED_BACK":
        return f"the broker rolled it back (last word: {last})"
    return f"the broker says {state}, yet B has no effect of it"


def _decided_by_check(ops: Sequence[Op], msg: str) -> bool:
    return any(
        op.actor == BROKER and op.f == "deliver" and op.data.get("msg") == msg and "checks" in op.data
        for op in ops
    )


def _findings(ops: Sequence[Op], stores: Stores) -> list[str]:
    out: list[str] = []
    records = Counter(stores.records.values())
    out.append(
        f"A: {len(stores.committed)} order(s) committed, {records.get('ROLLED_BACK', 0)} rolled back"
        + (
            f", {records['BEGUN']} begun and never finished (rolled back by PostgreSQL)"
            if records.get("BEGUN")
            else ""
        )
    )
    states = Counter(str(m.get("state")) for m in stores.messages.values())
    out.append("broker: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no message"))
    answers: dict[str, list[str]] = defaultdict(list)
    for op in ops:
        if op.actor == BROKER and op.f == "check" and "answer" in op.data:
            answers[str(op.data.get("msg"))].append(str(op.data["answer"]))
    for msg, said in answers.items():
        state = stores.messages.get(msg, {}).get("state", "?")
        out.append(f"{msg}: {len(said)} check-back(s): {', '.join(said)} → {state}")
    for op in ops:
        if op.actor == PRODUCER and op.f == "end-lost":
            out.append(f"{op.data.get('msg')}: A's {op.data.get('action', 'word')} never reached the broker")
        elif op.f == "crash":
            out.append(f"{op.actor} crashed ({op.note})")
    skipped = [
        str(op.data.get("msg")) for op in ops if op.actor == CONSUMER and op.data.get("tick") == "duplicate"
    ]
    if skipped:
        out.append(f"B skipped {len(skipped)} redelivery(ies) by their mark: {', '.join(skipped)}")
    out.append(
        f"B: {sum(stores.effects.values())} effect(s) for {len(stores.effects)} message(s); "
        f"{len(stores.marks)} mark(s) set"
    )
    return out
