"""What a checker found wrong, and the verdict it makes.

A checker collects :class:`Problem` s — each a sentence, the key it is about (a message,
a transaction), the actors involved and the op of the moment it went wrong — and
:func:`violated` turns them into the verdict: the first one is its summary (with how many
more), the rest lead its findings, the moment of the first draws the line across the
lanes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collectors.runs import Op, Verdict


@dataclass(frozen=True)
class Problem:
    text: str
    key: str
    actors: tuple[str, ...] = ()
    op: Op | None = None
    """The narration of the moment it went wrong (a give-up, a second application)."""


def step_of(ops: Sequence[Op], msg: str, *ticks: str, actor: str = "", last: bool = False) -> Op | None:
    """The first (``last``: the last) op narrating a step of message ``msg`` with one of
    these ticks, by ``actor`` if one is named: the moment a problem points at."""
    found = [
        op
        for op in ops
        if op.data.get("msg") == msg and op.data.get("tick") in ticks and (not actor or op.actor == actor)
    ]
    return (found[-1] if last else found[0]) if found else None


def violated(invariant: str, problems: Sequence[Problem], findings: Sequence[str]) -> Verdict:
    first = problems[0]
    more = f"; {len(problems) - 1} more violation(s)" if len(problems) > 1 else ""
    return Verdict(
        holds=False,
        invariant=invariant,
        summary=f"violated: {first.text}{more}",
        actors=tuple(dict.fromkeys(a for p in problems for a in p.actors)),
        keys=tuple(dict.fromkeys(p.key for p in problems if p.key)),
        at_ms=first.op.t_ms if first.op else None,
        ops=tuple(p.op.index for p in problems if p.op),
        findings=tuple([f"violation: {p.text}" for p in problems[1:]] + list(findings)),
    )
