"""A benchmark's rounds: how many operations, how long, where the CPU went.

The benchmarks (``bench/``) alternate rounds of the sides they compare and report
each side's median rate, its latencies and the CPU per operation of each process
group, as Linux counts it (the client, the services, Redis, the rest of the
machine): on a small machine that, not the network, sets the rate.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0 for no values)."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def cpu_seconds(pids: Sequence[int]) -> float:
    """Time on a CPU of these processes, every thread, in seconds (``schedstat`` counts ns;
    ``stat``'s utime and stime count 10 ms ticks, too coarse for a short round)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (every core, every process, interrupts)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


ELSEWHERE = "the rest of the machine"


class Meter:
    """CPU seconds of each group of processes, and of the rest of the machine
    (:data:`ELSEWHERE`), between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._busy = 0.0
        self._cpu: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def start(self) -> None:
        self._busy = machine_busy_seconds()
        self._cpu = {g: cpu_seconds(pids()) for g, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        self.cpu = {g: cpu_seconds(pids()) - self._cpu[g] for g, pids in self.groups.items()}
        self.cpu[ELSEWHERE] = max(0.0, machine_busy_seconds() - self._busy - sum(self.cpu.values()))
        return self.cpu


@dataclass
class Round:
    """One round of one side: ``count`` operations in ``seconds``."""

    count: int
    seconds: float
    cpu: dict[str, float]
    """Process group -> CPU seconds during the round."""
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds


class Rounds:
    """What every side of a benchmark says of its rounds (mixed into each bench's side)."""

    rounds: Sequence[Round]

    @property
    def rates(self) -> list[float]:
        return [r.rate for r in self.rounds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.rounds for x in r.latencies_ms]

    @property
    def count(self) -> int:
        return sum(r.count for r in self.rounds)

    def cpu_ms_per_op(self) -> dict[str, float]:
        """CPU ms per operation of each process group, every round pooled."""
        total: dict[str, float] = {}
        for r in self.rounds:
            for name, s in r.cpu.items():
                total[name] = total.get(name, 0.0) + s
        return {name: 1000 * s / max(1, self.count) for name, s in total.items()}


def rate_line(side: Rounds) -> str:
    """A side's median rate, its rounds' range, and p50 / p99 latency."""
    lat = side.latencies
    return (
        f"{side.median_rate:7,.0f}/s  (rounds {min(side.rates):,.0f}-{max(side.rates):,.0f})  "
        f"p50 {percentile(lat, 50):5.2f} ms  p99 {percentile(lat, 99):6.2f} ms"
    )
