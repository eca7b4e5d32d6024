"""Checkers of the lock scenarios: pure functions of a history as the store holds it.

Mutual exclusion on a protected resource
-----------------------------------------
Every client does a read-modify-write of the resource while it believes it
holds the lock. A *hold* starts when the client's ``acquire`` completed ok
and, for the purpose of a write, lasts until that write completed. Two
writes the resource *accepted* whose holds overlap violate mutual exclusion:
both clients believed they held the lock at once and both changed the
resource (Jepsen's lock workloads judge the same thing). A write the
resource *rejected* (fencing: its token was lower than one already seen)
does not count — that is fencing doing its job, and it is reported as such.

Overlap is decided by the order of the operations in the history, not by
their timestamps: client B's grant recorded before client A's write
completed overlaps A's hold even when both happened in the same millisecond.
:class:`MutexMonitor` judges as operations arrive, keeping only the accepted
writes an open hold could still overlap, so judging a write costs what the
open holds cost, never a replay of the whole history.

Two further findings, reported beside the verdict:

- lost updates: the final value of the counter is lower than the number of
  accepted increments (the visible damage of a violation);
- fencing gone backwards: a rightful holder (the latest to acquire) was
  rejected because the fencing counter restarted below what the resource
  had seen (the lock node restarted empty).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from collectors.runs import RUNNER, Op, Verdict

MUTEX = "mutual exclusion on the protected resource"
FINAL = "final"
"""The runner's last read of a resource (``data``: lock, writes, rejected)."""


@dataclass(frozen=True)
class Hold:
    actor: str
    acquired: Op
    write: Op

    @property
    def start(self) -> int:
        return self.acquired.t_ms


@dataclass
class _Resource:
    accepted: int = 0
    rejected: list[Hold] = field(default_factory=list)
    recent: list[Hold] = field(default_factory=list)
    """Accepted writes an open hold could still overlap."""
    first: tuple[Hold, Hold] | None = None
    regressions: list[str] = field(default_factory=list)


class MutexMonitor:
    """Mutual exclusion judged as operations arrive, in history order, per resource."""

    def __init__(self) -> None:
        self._last: dict[str, Op] = {}
        """actor -> its latest ok acquire."""
        self._open: dict[str, Op] = {}
        """actor -> the acquire of a hold it has not released yet."""
        self._latest: Op | None = None
        self.resources: dict[str, _Resource] = {}

    def feed(self, op: Op) -> tuple[Hold, Hold] | None:
        """Take one op; returns the pair of holds when it makes the first violation on
        its resource (at once: the live checker marks it on the lanes)."""
        if op.f == "acquire" and op.kind == "ok":
            self._last[op.actor] = self._open[op.actor] = self._latest = op
        elif op.f in ("release", "crash"):
            self._open.pop(op.actor, None)
        elif op.f == "write" and op.kind in ("ok", "fail") and op.actor in self._last:
            return self._write(Hold(op.actor, self._last[op.actor], op))
        return None

    def _write(self, hold: Hold) -> tuple[Hold, Hold] | None:
        res = self.resources.setdefault(hold.write.key, _Resource())
        if hold.write.kind == "fail":
            res.rejected.append(hold)
            latest = self._latest
            if latest is not None and latest.actor == hold.actor and "seen" in hold.write.data:
                res.regressions.append(
                    f"fencing went backwards: {hold.actor} held the lock (fence {latest.fence}) "
                    f"yet was rejected (the resource had seen {hold.write.data['seen']}) — "
                    "the counter restarted with its node"
                )
            return None
        res.accepted += 1
        found = None
        for other in res.recent:
            # other's write completed before ours; the holds overlap when it completed
            # after our grant (ours necessarily completed after its grant)
            if other.actor != hold.actor and other.write.index > hold.acquired.index:
                found = (other, hold) if other.acquired.index <= hold.acquired.index else (hold, other)
                break
        res.recent.append(hold)
        oldest_open = min((a.index for a in self._open.values()), default=None)
        res.recent = [h for h in res.recent if oldest_open is not None and h.write.index > oldest_open]
        if found is not None and res.first is None:
            res.first = found
            return found
        return None


def first_overlap(ops: Iterable[Op]) -> tuple[Hold, Hold] | None:
    """The first pair of accepted writes from overlapping holds, if any (any resource)."""
    monitor = MutexMonitor()
    for op in ops:
        pair = monitor.feed(op)
        if pair is not None:
            return pair
    return None


def check_mutex(
    ops: Iterable[Op], lock_key: str, resource_key: str, final_value: int | None = None
) -> Verdict:
    monitor = MutexMonitor()
    for op in ops:
        monitor.feed(op)
    res = monitor.resources.get(resource_key, _Resource())
    findings: list[str] = []
    if res.rejected:
        who = ", ".join(sorted({f"{h.actor} (fence {h.write.fence})" for h in res.rejected}))
        findings.append(f"{len(res.rejected)} stale write(s) rejected by fencing: {who}")
    if final_value is not None and final_value < res.accepted:
        findings.append(
            f"lost update: {res.accepted} increments were accepted but the resource holds {final_value}"
        )
    findings.extend(res.regressions[:3])
    if res.first is None:
        summary = f"held: {res.accepted} writes accepted, none from overlapping holds" + (
            f"; {len(res.rejected)} stale write(s) rejected" if res.rejected else ""
        )
        return Verdict(
            holds=True,
            invariant=MUTEX,
            summary=summary,
            keys=(lock_key, resource_key),
            findings=tuple(findings),
        )
    a, b = res.first
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


def _who(hold: Hold) -> str:
    fence = hold.acquired.fence
    return hold.actor if fence is None else f"{hold.actor} (fence {fence})"


def finals(ops: Sequence[Op]) -> list[Op]:
    """The runner's final reads of the protected resources, one per resource."""
    return [op for op in ops if op.actor == RUNNER and op.f == FINAL and op.kind == "ok"]


def check_lock_run(ops: Sequence[Op], params: Mapping[str, Any]) -> Verdict:
    """A lock scenario's verdict: mutual exclusion on its one protected resource."""
    final = finals(ops)
    if not final:
        raise ValueError("the history has no final read of the protected resource")
    op = final[-1]
    return check_mutex(ops, str(op.data.get("lock", "")), op.key, int(op.data.get("value", 0)))


FIFO = "FIFO: the lock is granted in the order contenders queued"


def with_fifo(verdict: Verdict, ops: Sequence[Op], watch: str) -> Verdict:
    """Add the queue's fairness (grants in sequence order) and its wake-up cost to a verdict."""
    grants = [op for op in ops if op.f == "acquire" and op.kind == "ok" and "seq" in op.data]
    if not grants:
        return verdict
    wakeups = sum(int(op.data.get("wakeups", 0)) for op in grants)
    requests = sum(int(op.data.get("requests", 0)) for op in grants)
    cost = (
        f"{len(grants)} acquisitions: {wakeups} wake-ups ({wakeups / len(grants):.1f} per "
        f"acquisition, watch={watch}), {requests / len(grants):.1f} requests per acquisition"
    )
    findings = (*verdict.findings, cost)
    previous: Op | None = None
    for op in grants:
        if previous is not None and int(op.data["seq"]) < int(previous.data["seq"]):
            if not verdict.holds:
                break
            return Verdict(
                holds=False,
                invariant=FIFO,
                actors=(op.actor, previous.actor),
                at_ms=op.t_ms,
                keys=verdict.keys,
                ops=(previous.index, op.index),
                findings=findings,
                summary=(
                    f"violated: {op.actor} (seq {op.data['seq']}) got the lock after "
                    f"{previous.actor} (seq {previous.data['seq']}) although it queued first"
                ),
            )
        previous = op
    return replace(
        verdict, findings=findings, invariant=verdict.invariant + (" and FIFO" if verdict.holds else "")
    )
