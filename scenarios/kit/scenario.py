"""A scenario, as the runner and the catalogue know it: its spec, how it runs, how it
is judged.

``run`` drives the actors (and writes the last observations it needs judged —
a counter's final value, a ledger's rows — into the history); ``check`` is a
pure function of the history *as the store holds it* and the run's
parameters: the same history every viewer reads, so anyone could judge it
again. ``live``, if given, installs checkers that mark a violation on the
lanes the moment it happens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from collectors.runs import Op, Verdict
from scenarios.kit.catalogue import ScenarioSpec
from scenarios.kit.context import RunContext

Check = Callable[[Sequence[Op], Mapping[str, str | int]], Verdict]


@dataclass(frozen=True)
class Scenario:
    spec: ScenarioSpec
    run: Callable[[RunContext], Awaitable[None]]
    check: Check
    live: Callable[[RunContext], None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name
