"""The ordering invariant, judged from the history: per order, events applied in
sequence order, none twice, none lost.

What the history must hold (the ``ordering`` scenario writes it; this module
reads nothing else):

- every application of an event, as the store holds it at the end — each
  order's log, read back by the run: ``Op(f="applied", kind="ok", key=<order
  id>, data={"seq": n, "worker": consumer, "at_ms": when})``, per order in the
  order applied;
- the producers' account of what they emitted: ``Op(f="emitted",
  data={"orders": {order id: last seq}})`` — every order's events are numbered
  1..last;
- for the findings: the router's ring changes (``Op(f="ring", data={"moved":
  [[order, before, after]...], ...})``) and the producers' sends (``Op(f="emit",
  kind="ok", key=order, data={"seq", "worker"})``).

A violation is the first of, per order: an event applied when one before it had
not been (out of order), an event applied again (twice), an event never applied
(lost) — :func:`collectors.sequence.sequence_breaches` judges each order's
sequence, as the rings family does on screen. The verdict names the first
violation in time, its order, its worker(s) and the ops that show it; the
findings count all three kinds over every order, and say for each ring change
how many orders moved and how many sat in two queues (events still to apply at
the old owner while the new one got the next) and for how long.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from collectors.runs import Op, Verdict
from collectors.sequence import missing, sequence_breaches

INVARIANT = "per order, events applied in sequence order, none twice, none lost"
APPLIED = "applied"


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


def _worker(op: Op) -> str:
    """The consumer that applied it (``<worker>.<incarnation>``)."""
    return str(op.data.get("worker", op.actor))


def lane(consumer: str) -> str:
    """The worker's lane: every incarnation of a worker narrates on one."""
    return consumer.rpartition(".")[0] or consumer


def _at(op: Op) -> int:
    at = op.data.get("at_ms")
    return int(at) if isinstance(at, int) else op.t_ms


def breaches(ops: Sequence[Op]) -> tuple[list[Breach], dict[str, int]]:
    """Every breach of the invariant, earliest first, and each order's last seq."""
    emitted = next((op for op in reversed(ops) if op.f == "emitted"), None)
    if emitted is None:
        raise ValueError("the history has no account of the events emitted")
    expected = {str(k): int(v) for k, v in dict(emitted.data.get("orders", {})).items()}
    applied: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == APPLIED and op.kind == "ok":
            applied[op.key].append(op)
    found: list[Breach] = []
    for order, done in applied.items():
        for b in sequence_breaches(int(op.data["seq"]) for op in done):
            op = done[b.position]
            if b.kind == "twice":
                first = done[b.before]
                workers = tuple(dict.fromkeys((lane(_worker(first)), lane(_worker(op)))))
                text = f"{order} event {b.seq} applied twice (by {_worker(first)}, then by {_worker(op)})"
                found.append(Breach("twice", order, b.seq, (first.index, op.index), workers, _at(op), text))
            else:
                text = f"{order} event {b.seq} applied by {_worker(op)} before event {b.before}"
                found.append(
                    Breach("out-of-order", order, b.seq, (op.index,), (lane(_worker(op)),), _at(op), text)
                )
    found.sort(key=lambda b: (b.at_ms if b.at_ms is not None else 0, b.ops))
    for order, last in sorted(expected.items()):
        for seq in missing((int(op.data["seq"]) for op in applied.get(order, [])), last):
            found.append(Breach("lost", order, seq, (), (), None, f"{order} event {seq} never applied"))
    return found, expected


def check(ops: Sequence[Op]) -> Verdict:
    found, expected = breaches(ops)
    counts = {kind: sum(1 for b in found if b.kind == kind) for kind in ("out-of-order", "twice", "lost")}
    findings = (
        f"{counts['out-of-order']} applied out of order, {counts['twice']} applied twice, "
        f"{counts['lost']} never applied, over {len(expected)} order(s)",
        *ring_findings(ops, {b.order for b in found}),
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


def ring_findings(ops: Sequence[Op], breached: set[str]) -> list[str]:
    """For each change of the ring: the orders it moved, and the window in which a moved
    order's events sat in two queues (from its first send to the new owner until the
    last event sent to the old owner was applied)."""
    sends: dict[str, list[Op]] = defaultdict(list)
    applied_at: dict[tuple[str, int], int] = {}
    for op in ops:
        if op.f == "emit" and op.kind == "ok":
            sends[op.key].append(op)
        elif op.f == APPLIED and op.kind == "ok":
            applied_at.setdefault((op.key, int(op.data["seq"])), _at(op))
    out = []
    for change in (op for op in ops if op.f == "ring" and op.data.get("moved") is not None):
        moved = [m for m in change.data["moved"] if isinstance(m, list) and len(m) == 3]
        windows: list[int] = []
        for order, before, after in moved:
            to_old = [s for s in sends[order] if s.data.get("worker") == before and s.t_ms <= change.t_ms]
            to_new = [s for s in sends[order] if s.data.get("worker") == after and s.t_ms >= change.t_ms]
            if not to_old or not to_new:
                continue
            last_old = max(int(s.data["seq"]) for s in to_old)
            done = applied_at.get((order, last_old))
            opened = min(s.t_ms for s in to_new)
            if done is None or done > opened:
                windows.append((done or opened) - opened)
        text = f"ring change at t={change.t_ms} ms: {change.note}"
        if windows:
            text += f"; {len(windows)} sat in two queues, for up to {max(windows)} ms"
        else:
            text += "; none sat in two queues"
        reordered = sorted(str(m[0]) for m in moved if m[0] in breached)
        if reordered:
            text += f"; breached since: {', '.join(reordered)}"
        out.append(text)
    return out
