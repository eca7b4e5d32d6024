"""The txn-tcc checker: what the databases hold at the end, read into the history.

Each participant's ``effects`` rows say which phase was applied to which account, in
order; its balances and fence log say where it ended. A branch must end confirmed or
cancelled, the same way on both participants; no phase may be applied twice; no Try
may run after its branch's Cancel (a hanging Try: funds frozen that nobody releases);
nothing may stay frozen; and the money available must be what was put in.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from collectors.runs import RUNNER, Op, Verdict
from scenarios.kit.problems import Problem, violated

COORDINATOR = "tcc-coordinator"
INVARIANT = (
    "every branch ends confirmed or cancelled, no phase is applied twice, reservations never leak, "
    "and balances are conserved"
)


@dataclass(frozen=True)
class Effect:
    """A phase applied on a participant, as its ``effects`` table holds it."""

    participant: str
    txn: str
    phase: str
    account: str
    available: int
    frozen: int

    def did(self) -> str:
        """What it did, in words: ``froze 10 on postgres-1/acct-2``."""
        where, a, f = f"{self.participant}/{self.account}", self.available, self.frozen
        if f > 0 and a == -f:
            return f"froze {f} on {where}"
        if f < 0 and a == -f:
            return f"released {-f} on {where}"
        if f < 0 and not a:
            return f"spent {-f} frozen on {where}"
        if a > 0 and not f:
            return f"credited {a} to {where}"
        if not a and not f:
            return f"changed no balance on {where}"
        return f"changed {where} by available {a:+d}, frozen {f:+d}"


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    """Judge what the databases hold at the end (``balances``: accounts, fence log and
    effects of each participant) against what was seeded."""
    if not any(op.actor == RUNNER and op.f == "db-read" for op in ops):
        raise ValueError("the history has no read of the participants")
    seeded = next(op for op in ops if op.actor == RUNNER and op.f == "seeded")
    names = [str(n) for n in seeded.data.get("participants", [])]
    reads = {op.key: op for op in ops if op.actor == RUNNER and op.f == "balances"}
    branches: dict[tuple[str, str], list[Effect]] = defaultdict(list)
    for name, read in reads.items():
        for txn, _branch, phase, account, da, df in read.data.get("effects", []):
            branches[(name, str(txn))].append(
                Effect(name, str(txn), str(phase), str(account), int(da), int(df))
            )
    problems = [
        *_twice(ops, branches),
        *_hanging(ops, branches),
        *_unended(ops, branches),
        *_split(names, branches),
        *_frozen(reads, branches),
        *_money(reads, int(seeded.data.get("total", 0))),
    ]
    findings = _findings(ops, reads)
    if problems:
        return violated(INVARIANT, problems, findings)
    txns = {txn for _, txn in branches}
    confirmed = [t for t in txns if all("confirm" in _phases(branches, n, t) for n in names)]
    total = sum(int(r.data.get("available", 0)) for r in reads.values())
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {len(confirmed)} transfer(s) confirmed and {len(txns) - len(confirmed)} cancelled "
        "on every branch; no phase applied twice, no Try after its Cancel, nothing left frozen; "
        f"{total} conserved",
        findings=tuple(findings),
    )


def _phases(branches: Mapping[tuple[str, str], list[Effect]], participant: str, txn: str) -> list[str]:
    return [e.phase for e in branches.get((participant, txn), [])]


def _narration(ops: Sequence[Op], participant: str, txn: str, phase: str, result: str = "") -> Op | None:
    """The participant's own op for a phase it applied (the last one: a repeat's)."""
    found = [
        op
        for op in ops
        if op.actor == participant and op.f == phase and op.key == txn and op.kind == "ok"
        if not result or op.value == result
    ]
    return found[-1] if found else None


TIMES = {2: "twice", 3: "three times"}


def _twice(ops: Sequence[Op], branches: Mapping[tuple[str, str], list[Effect]]) -> list[Problem]:
    out = []
    for (p, txn), effects in branches.items():
        for phase, n in Counter(e.phase for e in effects).items():
            if n > 1:
                e = next(e for e in effects if e.phase == phase)
                out.append(
                    Problem(
                        f"{txn} {phase.capitalize()} applied {TIMES.get(n, f'{n} times')} on {p}: "
                        f"it {e.did()} each time",
                        txn,
                        (p,),
                        _narration(ops, p, txn, phase, "again"),
                    )
                )
    return out


def _hanging(ops: Sequence[Op], branches: Mapping[tuple[str, str], list[Effect]]) -> list[Problem]:
    """A Try applied after its branch's Confirm or Cancel, and a Confirm or Cancel applied with
    no Try before it that changed a balance (an empty rollback the fence would have recorded)."""
    out = []
    for (p, txn), effects in branches.items():
        phases = [e.phase for e in effects]
        ended = next((i for i, ph in enumerate(phases) if ph != "try"), None)
        if ended is None:
            continue
        early = effects[ended]
        untried = ended == 0 and bool(early.available or early.frozen)
        late = [e for e in effects[ended + 1 :] if e.phase == "try"]
        if late:
            hidden = (
                f"; the balances hide it only because that Cancel, with no Try before it, had {early.did()}"
                if untried
                else ""
            )
            out.append(
                Problem(
                    f"{txn}'s Try on {p} ran after its {early.phase.capitalize()} (a hanging Try): it "
                    f"{late[0].did()} that no Confirm or Cancel will release{hidden}",
                    txn,
                    (p,),
                    _narration(ops, p, txn, "try", "late"),
                )
            )
        elif untried:
            out.append(
                Problem(
                    f"{txn}'s {early.phase.capitalize()} on {p} ran with no Try before it (an empty "
                    f"rollback): it {early.did()}" + (", never frozen" if early.frozen < 0 else ""),
                    txn,
                    (p,),
                    _narration(ops, p, txn, early.phase, "untried"),
                )
            )
    return out


def _unended(ops: Sequence[Op], branches: Mapping[tuple[str, str], list[Effect]]) -> list[Problem]:
    out = []
    for (p, txn), effects in branches.items():
        if all(e.phase == "try" for e in effects):
            out.append(
                Problem(
                    f"{txn}'s Try on {p} was never confirmed nor cancelled: it {effects[0].did()}, for ever",
                    txn,
                    (p,),
                    _narration(ops, p, txn, "try"),
                )
            )
    return out


def _split(names: list[str], branches: Mapping[tuple[str, str], list[Effect]]) -> list[Problem]:
    out = []
    for txn in sorted({t for _, t in branches}, key=lambda t: (len(t), t)):
        confirmed = [n for n in names if "confirm" in _phases(branches, n, txn)]
        if confirmed and len(confirmed) != len(names):
            others = [n for n in names if n not in confirmed]
            out.append(
                Problem(f"{txn} was confirmed on {', '.join(confirmed)} but not on {', '.join(others)}", txn)
            )
    return out


def _frozen(reads: Mapping[str, Op], branches: Mapping[tuple[str, str], list[Effect]]) -> list[Problem]:
    out = []
    for p, read in reads.items():
        for account, (_, frozen) in sorted(dict(read.data.get("accounts", {})).items()):
            if not frozen:
                continue
            sums: Counter[str] = Counter()
            for (q, txn), effects in branches.items():
                if q == p:
                    sums[txn] += sum(e.frozen for e in effects if e.account == account)
            by = (
                ", ".join(_culprit(txn, _phases(branches, p, txn)) for txn, n in sums.items() if n)
                or "nobody known"
            )
            what = "funds frozen for ever" if frozen > 0 else "frozen below zero"
            out.append(Problem(f"{what}: {frozen} on {p}/{account}, by {by}", "", (p,)))
    return out


def _culprit(txn: str, phases: list[str]) -> str:
    if "try" in phases and phases[0] != "try":
        return f"{txn}'s late Try"
    if phases and phases[0] != "try":
        return f"{txn}'s {phases[0].capitalize()} with no Try"
    if len(phases) != len(set(phases)):
        return f"{txn}'s repeated phases ({' → '.join(phases)})"
    if phases == ["try"]:
        return f"{txn}'s Try, never ended"
    return f"{txn} ({' → '.join(phases)})"


def _money(reads: Mapping[str, Op], expected: int) -> list[Problem]:
    total = sum(int(r.data.get("available", 0)) for r in reads.values())
    if total == expected:
        return []
    return [
        Problem(f"the accounts hold {total} available, {expected} was put in ({total - expected:+d})", "")
    ]


def _findings(ops: Sequence[Op], reads: Mapping[str, Op]) -> list[str]:
    out: list[str] = []
    ends = [op for op in ops if op.actor == COORDINATOR and op.f == "transfer" and op.kind in ("ok", "fail")]
    outcomes = Counter(op.value for op in ends)
    cancelled = [op for op in ends if op.value == "cancelled"]
    out.append(
        f"{outcomes.get('confirmed', 0)} transfer(s) confirmed, {len(cancelled)} cancelled"
        + (f" ({'; '.join(f'{op.key}: {op.note}' for op in cancelled[:3])})" if cancelled else "")
        + "".join(f", {n} {o}" for o, n in outcomes.items() if o not in ("confirmed", "cancelled"))
    )
    suspended = [
        f"{txn} on {p}" for p, r in reads.items() for txn, _, s in r.data.get("fence", []) if s == "SUSPENDED"
    ]
    if suspended:
        out.append(f"{len(suspended)} empty rollback(s) recorded SUSPENDED: {', '.join(suspended)}")
    fenced = [op for op in ops if op.data.get("tick") == "fenced"]
    if fenced:
        out.append(
            f"{len(fenced)} call(s) stopped by the fence: "
            + "; ".join(f"{op.actor}: {op.note}" for op in fenced)
        )
    retries: Counter[tuple[str, str, str]] = Counter(
        (op.key, str(op.value), str(op.data.get("branch")))
        for op in ops
        if op.actor == COORDINATOR and op.f == "retry"
    )
    for (txn, phase, branch), n in retries.items():
        out.append(f"{txn}: {phase.capitalize()} on {branch} sent {n + 1} times ({n} failed)")
    out += [op.note for op in ops if op.actor == COORDINATOR and op.f == "try-failed"]
    unknown = [
        op.key for op in ops if op.f == "transfer" and op.actor.startswith("client-") and op.kind == "info"
    ]
    if unknown:
        out.append(f"no answer to their client: {', '.join(unknown)}")
    return out
