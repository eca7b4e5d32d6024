"""Measures of a lock under contention (pure: tested alone, used by lock-compare and bench).

Each acquisition is a :class:`Sample`: when its client started waiting, when
it got the lock, how many requests and wake-ups it cost. From those:

- latency: the wait from asking to holding, p50 / p99 / worst;
- cost: requests and wake-ups per acquisition (a polling waiter's every poll
  is both; a watching waiter is woken once when its predecessor goes — or,
  watching the parent, on every change);
- fairness: the share of hand-offs that went to the client that had waited
  longest (100% is FIFO).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from scenarios.kit.rounds import percentile


@dataclass(frozen=True)
class Sample:
    actor: str
    asked_ms: float
    granted_ms: float
    requests: int
    wakeups: int

    @property
    def wait_ms(self) -> float:
        return self.granted_ms - self.asked_ms


@dataclass(frozen=True)
class Contention:
    acquisitions: int
    p50_ms: float
    p99_ms: float
    worst_ms: float
    requests_per: float
    wakeups_per: float
    fifo_share: float
    """Hand-offs that went to the longest waiter, 0..1 (over hand-offs with a queue)."""
    handoffs: int


def ms_since(started: float) -> float:
    """Milliseconds since a ``time.monotonic()`` reading."""
    return (time.monotonic() - started) * 1000


def contention(samples: list[Sample]) -> Contention:
    if not samples:
        return Contention(0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0)
    waits = sorted(s.wait_ms for s in samples)
    by_grant = sorted(samples, key=lambda s: s.granted_ms)
    fair = handoffs = 0
    for s in by_grant:
        waiting = [o for o in samples if o.asked_ms <= s.granted_ms <= o.granted_ms]
        if len(waiting) < 2:
            continue  # nobody else was queueing: no choice to be fair about
        handoffs += 1
        if min(waiting, key=lambda o: o.asked_ms) is s:
            fair += 1
    return Contention(
        acquisitions=len(samples),
        p50_ms=percentile(waits, 50),
        p99_ms=percentile(waits, 99),
        worst_ms=waits[-1],
        requests_per=sum(s.requests for s in samples) / len(samples),
        wakeups_per=sum(s.wakeups for s in samples) / len(samples),
        fifo_share=fair / handoffs if handoffs else 1.0,
        handoffs=handoffs,
    )
