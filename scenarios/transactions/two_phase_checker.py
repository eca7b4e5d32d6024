"""The txn-2pc checker: what the databases hold at the end, read into the history.

Every transfer must have the same outcome on both participants — the ``applied`` rows
each database holds name the transfers whose branch committed there — the money both
hold together must be what was put in, and no branch of the run may be left prepared
(in doubt, holding its locks) in ``pg_prepared_xacts``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from collectors.runs import RUNNER, Op, Verdict

INVARIANT = (
    "every transfer has the same outcome on both participants, money is conserved, "
    "and nothing is left in doubt"
)
PROBE = "probe"
"""The actor whose transfer runs into the locks of a branch in doubt."""


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """Judge what the databases hold at the end (``balances``, ``in-doubt``) against what
    was seeded, and every transfer's outcome on each participant."""
    if not any(op.actor == RUNNER and op.f == "db-read" for op in ops):
        raise ValueError("the history has no read of the participants")
    seeded = next(op for op in ops if op.actor == RUNNER and op.f == "seeded")
    names = [str(n) for n in seeded.data.get("participants", [])]
    reads = {op.key: op for op in ops if op.actor == RUNNER and op.f == "balances"}
    doubt = [op for op in ops if op.actor == RUNNER and op.f == "in-doubt"]
    applied: dict[str, dict[str, Any]] = {
        n: dict(reads[n].data.get("applied", {})) for n in names if n in reads
    }
    findings = _findings(ops, applied)
    for name in names:
        if name in reads:
            held = ", ".join(
                f"{a} {b}" for a, b in sorted(dict(reads[name].data.get("balances", {})).items())
            )
            findings.append(f"final balances on {name}: {held} (total {reads[name].data.get('total')})")
    total = sum(int(r.data.get("total", 0)) for r in reads.values())
    expected = int(seeded.data.get("total", 0))
    crash = next((op for op in ops if op.f in ("crash-point", "down")), None)
    if doubt:
        ages = ", ".join(
            f"{op.key} ({op.data.get('participant')}, {int(op.data.get('age_ms', 0)) / 1000:.1f} s old, "
            f"{op.data.get('locks')} lock(s))"
            for op in doubt
        )
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: {len(doubt)} branch(es) left in doubt, holding their locks: {ages}",
            actors=tuple(dict.fromkeys(str(op.data.get("participant")) for op in doubt)),
            keys=tuple(op.key for op in doubt),
            at_ms=crash.t_ms if crash else None,
            ops=tuple(op.index for op in doubt),
            findings=tuple(findings),
        )
    split = _split(applied)
    if split:
        txn, where = split[0]
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: {txn} took effect on {where} only"
            + (f"; {len(split) - 1} more transfer(s) split" if len(split) > 1 else ""),
            actors=tuple(names),
            findings=tuple(findings),
        )
    if total != expected:
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: the databases hold {total}, {expected} was put in ({total - expected:+d})",
            actors=tuple(names),
            findings=tuple(findings),
        )
    both = sum(1 for txn in set().union(*applied.values()) if all(txn in a for a in applied.values()))
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {both} transfer(s) committed on both participants, the rest on neither; "
        f"{total} conserved; nothing in doubt",
        findings=tuple(findings),
    )


def _split(applied: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Transfers applied on some participants but not all: (txn, where)."""
    every = sorted(set().union(*applied.values()), key=lambda t: (len(t), t)) if applied else []
    out = []
    for txn in every:
        where = [n for n, a in applied.items() if txn in a]
        if len(where) != len(applied):
            out.append((txn, ", ".join(where)))
    return out


def _findings(ops: Sequence[Op], applied: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    outcomes: dict[str, list[str]] = defaultdict(list)
    for op in ops:
        if op.f == "transfer" and op.actor.startswith("coord-") and op.kind in ("ok", "fail"):
            outcomes[op.value].append(op.key)
    aborted = [op for op in ops if op.f == "transfer" and op.actor.startswith("coord-") and op.kind == "fail"]
    out.append(
        f"{len(outcomes.get('committed', []))} transfer(s) committed, {len(aborted)} aborted"
        + (f" ({'; '.join(f'{op.key}: {op.note}' for op in aborted[:3])})" if aborted else "")
    )
    recovered = [op for op in ops if op.f == "recover-txn"]
    if recovered:
        out.append("recovery: " + "; ".join(op.note for op in recovered))
    for op in ops:
        if op.f == "blocked":
            out.append(f"blocked behind a branch in doubt: {op.note}")
        elif op.f == "survived":
            out.append(f"{op.actor}: {op.note}")
        elif op.f == "transfer" and op.actor == PROBE and op.kind != "invoke":
            out.append(f"the blocked transfer {op.key}: {op.note}")
    unknown = [
        op.key for op in ops if op.f == "transfer" and op.actor.startswith("client-") and op.kind == "info"
    ]
    for txn in unknown:
        where = [n for n, a in applied.items() if txn in a]
        out.append(
            f"{txn}: its client got no answer; "
            + (f"applied on {', '.join(where)}" if where else "applied nowhere")
        )
    return out
