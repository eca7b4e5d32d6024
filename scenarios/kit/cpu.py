"""CPU time, as Linux counts it: of some processes, and of the whole machine.

The benchmarks say where each request's CPU went (the client, the services, Redis,
the rest of the machine); on a small machine that, not the network, sets the rate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


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
