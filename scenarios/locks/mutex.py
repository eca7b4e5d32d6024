"""Checkers: pure functions from a history of operations to a verdict.

Mutual exclusion on a protected resource
-----------------------------------------
Every client does a read-modify-write of the resource while it believes it
holds the lock. A *hold* starts when the client's ``acquire`` completed ok
and, for the purpose of a write, lasts until that write completed. Two
writes the resource *accepted* whose holds overlap in time violate mutual
exclusion: both clients believed they held the lock at once and both
changed the resource (Jepsen's lock workloads judge the same thing). A write
the resource *rejected* (fencing: its token was lower than one already seen)
does not count — that is fencing doing its job, and it is reported as such.

Two further findings, reported beside the verdict:

- lost updates: the final value of the counter is lower than the number of
  accepted increments (the visible damage of a violation);
- fencing gone backwards: a rightful holder (the latest to acquire) was
  rejected because the fencing counter restarted below what the resource
  had seen (the lock node restarted empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from collectors.events import Verdict
from collectors.runs import Op

MUTEX = "mutual exclusion on the protected resource"


@dataclass(frozen=True)
class _Hold:
    actor: str
    acquired: Op
    write: Op

    @property
    def start(self) -> int:
        return self.acquired.t_ms

    @property
    def end(self) -> int:
        return self.write.t_ms


def _writes_with_holds(ops: list[Op]) -> tuple[list[_Hold], list[_Hold]]:
    """(accepted, rejected) writes, each with the acquire it was made under."""
    last_acquire: dict[str, Op] = {}
    accepted: list[_Hold] = []
    rejected: list[_Hold] = []
    for op in ops:
        if op.f == "acquire" and op.kind == "ok":
            last_acquire[op.actor] = op
        elif op.f == "write" and op.kind in ("ok", "fail") and op.actor in last_acquire:
            hold = _Hold(op.actor, last_acquire[op.actor], op)
            (accepted if op.kind == "ok" else rejected).append(hold)
    return accepted, rejected


def first_overlap(ops: list[Op]) -> tuple[_Hold, _Hold] | None:
    """The earliest pair of accepted writes from overlapping holds, if any."""
    accepted, _ = _writes_with_holds(ops)
    worst: tuple[_Hold, _Hold] | None = None
    for i, a in enumerate(accepted):
        for b in accepted[i + 1 :]:
            if a.actor == b.actor or a.write.key != b.write.key:
                continue  # the same client, or two resources (lock-compare runs two locks)
            if a.start < b.end and b.start < a.end:
                pair = (a, b) if a.start <= b.start else (b, a)
                if worst is None or max(pair[0].start, pair[1].start) < max(worst[0].start, worst[1].start):
                    worst = pair
    return worst


def check_mutex(ops: list[Op], lock_key: str, resource_key: str, final_value: int | None = None) -> Verdict:
    accepted, rejected = _writes_with_holds(ops)
    findings: list[str] = []
    if rejected:
        who = ", ".join(sorted({f"{h.actor} (fence {h.write.fence})" for h in rejected}))
        findings.append(f"{len(rejected)} stale write(s) rejected by fencing: {who}")
    if final_value is not None and final_value < len(accepted):
        findings.append(
            f"lost update: {len(accepted)} increments were accepted but the resource holds {final_value}"
        )
    findings.extend(_fence_regressions(ops))
    pair = first_overlap(ops)
    if pair is None:
        summary = f"held: {len(accepted)} writes accepted, none from overlapping holds" + (
            f"; {len(rejected)} stale write(s) rejected" if rejected else ""
        )
        return Verdict(
            holds=True,
            invariant=MUTEX,
            summary=summary,
            keys=(lock_key, resource_key),
            findings=tuple(findings),
        )
    a, b = pair
    if a.write.fence is not None and a.write.fence == b.write.fence:
        findings.append(
            f"fencing could not tell them apart: both held fence {a.write.fence} "
            "(the counter did not survive with the lock's node)"
        )
    at = max(a.start, b.start)
    summary = (
        f"violated: {_who(a)} and {_who(b)} both wrote {resource_key} while both "
        f"believed they held {lock_key}, overlapping from t={at} ms"
    )
    return Verdict(
        holds=False,
        invariant=MUTEX,
        summary=summary,
        actors=(a.actor, b.actor),
        keys=(lock_key, resource_key),
        at_ms=at,
        ops=(a.acquired.index, b.acquired.index, a.write.index, b.write.index),
        findings=tuple(findings),
    )


def _who(hold: _Hold) -> str:
    fence = hold.acquired.fence
    return hold.actor if fence is None else f"{hold.actor} (fence {fence})"


def _fence_regressions(ops: list[Op]) -> list[str]:
    """Rejected writes by the most recent acquirer: the fencing counter went backwards."""
    out = []
    latest: Op | None = None
    for op in ops:
        if op.f == "acquire" and op.kind == "ok":
            latest = op
        elif (
            op.f == "write"
            and op.kind == "fail"
            and latest is not None
            and latest.actor == op.actor
            and latest.fence is not None
            and "resource has seen" in op.note
        ):
            out.append(
                f"fencing went backwards: {op.actor} held the lock (fence {latest.fence}) "
                f"yet was rejected ({op.note}) — the counter restarted with its node"
            )
    return out[:3]


FIFO = "FIFO: the lock is granted in the order contenders queued"


def _grants(ops: list[Op]) -> list[tuple[Op, dict[str, Any]]]:
    out = []
    for op in ops:
        if op.f == "acquire" and op.kind == "ok" and op.value.startswith("{"):
            try:
                detail = json.loads(op.value)
            except ValueError:
                continue
            if isinstance(detail, dict):
                out.append((op, detail))
    return out


def with_fifo(verdict: Verdict, ops: list[Op], watch: str) -> Verdict:
    """Add the queue's fairness (grants in sequence order) and its wake-up cost to a verdict."""
    grants = _grants(ops)
    if not grants:
        return verdict
    wakeups = sum(int(d.get("wakeups", 0)) for _, d in grants)
    requests = sum(int(d.get("requests", 0)) for _, d in grants)
    cost = (
        f"{len(grants)} acquisitions: {wakeups} wake-ups ({wakeups / len(grants):.1f} per "
        f"acquisition, watch={watch}), {requests / len(grants):.1f} requests per acquisition"
    )
    findings = (*verdict.findings, cost)
    previous: tuple[Op, dict[str, Any]] | None = None
    for op, detail in grants:
        if previous is not None and int(detail["seq"]) < int(previous[1]["seq"]):
            if not verdict.holds:
                break
            early, late = op, previous[0]
            return Verdict(
                holds=False,
                invariant=FIFO,
                actors=(early.actor, late.actor),
                at_ms=early.t_ms,
                keys=verdict.keys,
                ops=(late.index, early.index),
                findings=findings,
                summary=(
                    f"violated: {early.actor} (seq {detail['seq']}) got the lock after "
                    f"{late.actor} (seq {previous[1]['seq']}) although it queued first"
                ),
            )
        previous = (op, detail)
    return replace(
        verdict, findings=findings, invariant=verdict.invariant + (" and FIFO" if verdict.holds else "")
    )
