"""The ordering invariant, judged from the history: per order, events applied in
sequence order, none twice, none lost.

What the history must hold (the ``ordering`` scenario writes it; this module
reads nothing else):

- every application of an event by a worker: ``Op(f="apply", kind="ok",
  key=<order id>, data={"seq": n, "worker": name})``, in the order the store
  recorded them (an op's index is its place in the history stream);
- the producers' account of what they emitted, read back at the end:
  ``Op(f="emitted", data={"orders": {order id: last seq}})`` — every order's
  events are numbered 1..last.

A violation is the first of, per order: an event applied when the one before
it had not been (out of order), an event applied again (twice), an event never
applied (lost). The verdict names the first violation in history order, its
order, its worker(s) and the ops that show it; the findings count all three
kinds over every order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from collectors.runs import Op, Verdict

INVARIANT = "per order, events applied in sequence order, none twice, none lost"


@dataclass(frozen=True)
class Breach:
    kind: str
    """out-of-order | twice | lost"""
    order: str
    seq: int
    ops: tuple[int, ...]
    workers: tuple[str, ...]
    at_ms: int | None
    text: str


def breaches(ops: Sequence[Op]) -> tuple[list[Breach], dict[str, int]]:
    """Every breach of the invariant, in history order, and each order's last seq."""
    emitted = next((op for op in reversed(ops) if op.f == "emitted"), None)
    if emitted is None:
        raise ValueError("the history has no account of the events emitted")
    expected = {str(k): int(v) for k, v in dict(emitted.data.get("orders", {})).items()}
    applied: dict[str, dict[int, Op]] = defaultdict(dict)
    found: list[Breach] = []
    for op in ops:
        if op.f != "apply" or op.kind != "ok":
            continue
        order, seq, worker = op.key, int(op.data["seq"]), str(op.data.get("worker", op.actor))
        done = applied[order]
        if seq in done:
            first = done[seq]
            found.append(
                Breach(
                    "twice",
                    order,
                    seq,
                    (first.index, op.index),
                    tuple(dict.fromkeys((str(first.data.get("worker", first.actor)), worker))),
                    op.t_ms,
                    f"{order} event {seq} applied twice (by {first.data.get('worker', first.actor)}, "
                    f"then by {worker})",
                )
            )
            continue
        missing = [s for s in range(1, seq) if s not in done]
        if missing:
            found.append(
                Breach(
                    "out-of-order",
                    order,
                    seq,
                    (op.index,),
                    (worker,),
                    op.t_ms,
                    f"{order} event {seq} applied by {worker} before event {missing[0]}",
                )
            )
        done[seq] = op
    for order, last in sorted(expected.items()):
        for seq in range(1, last + 1):
            if seq not in applied.get(order, {}):
                found.append(Breach("lost", order, seq, (), (), None, f"{order} event {seq} never applied"))
    return found, expected


def check(ops: Sequence[Op]) -> Verdict:
    found, expected = breaches(ops)
    counts = {kind: sum(1 for b in found if b.kind == kind) for kind in ("out-of-order", "twice", "lost")}
    findings = (
        f"{counts['out-of-order']} applied out of order, {counts['twice']} applied twice, "
        f"{counts['lost']} never applied, over {len(expected)} order(s)",
    )
    if not found:
        events = sum(expected.values())
        return Verdict(
            holds=True,
            invariant=INVARIANT,
            summary=f"held: {events} event(s) of {len(expected)} order(s), each applied once, in order",
            findings=findings,
        )
    first = found[0]
    more = f"; {len(found) - 1} more breach(es)" if len(found) > 1 else ""
    return Verdict(
        holds=False,
        invariant=INVARIANT,
        summary=f"violated: {first.text}{more}",
        actors=first.workers,
        keys=(first.order,),
        at_ms=first.at_ms,
        ops=first.ops,
        findings=findings,
    )
