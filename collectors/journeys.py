"""Messages followed across a run's lanes: each one's journey.

Every op that names a message in its data (``msg``) — A's commit, the relay's publish,
the broker's check-back, B's effect — is a step of that message's journey, whichever
process wrote it; a message's steps are put in time order (each process stamps its own
and narrates in batches of its own, so the stream's order is not theirs). The path reads
actor first, repeats folded: ``A committed → relay published ×2 → B-1 applied``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from collectors.runs import NEMESIS, Op, msg_of


@dataclass(frozen=True)
class Step:
    at_ms: int
    actor: str
    what: str
    """The op's tick (``published``, ``applied``...), else its function and completion."""
    note: str = ""


@dataclass(frozen=True)
class Journey:
    """One message's path through a run, from whoever wrote it to whoever applied it."""

    msg: str
    steps: tuple[Step, ...]
    path: str = ""
    """``A committed → relay published ×2 → B-1 applied``: repeats of a step folded."""
    bad: bool = False
    """A step went wrong: applied twice, a violation, an error."""


def path_of(steps: Iterable[Step]) -> str:
    """``A committed → relay published ×2 → B-1 applied``: repeats of a step folded."""
    out: list[tuple[str, int]] = []
    for s in steps:
        label = f"{s.actor} {s.what}"
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1] + 1)
        else:
            out.append((label, 1))
    return " → ".join(label + (f" ×{n}" if n > 1 else "") for label, n in out)


JOURNEYS = 200
"""At most this many messages followed per run (the latest); a step beyond
:data:`JOURNEY_STEPS` of one message is dropped, counted in its last step."""
JOURNEY_STEPS = 40
BOOK_MESSAGES = 4 * JOURNEYS
MORE = "(and later steps not shown)"
BAD_STEPS = ("twice", "violation", "error")


class JourneyBook:
    """A run's messages, kept as its history grows: each read adds only the new ops, and
    a message's journey is built again only when a step was added to it.

    :meth:`journeys` keeps at most :data:`JOURNEYS`: every message something unusual
    happened to (a step repeated, a redelivery, a claim, a check-back, a give-up, an
    error, a fault) before any plain one, the latest of each; in the order they started.
    Past :data:`BOOK_MESSAGES` messages the oldest plain ones are forgotten (still
    counted)."""

    def __init__(self) -> None:
        self._steps: dict[str, list[Step]] = {}
        self._built: dict[str, Journey] = {}
        self._eventful: set[str] = set()
        self._forgotten = 0

    def add(self, ops: Iterable[Op]) -> None:
        for op in ops:
            msg = msg_of(op)
            if not msg or op.kind == "invoke":  # its completion says when, and how it ended
                continue
            tick = op.data.get("tick")
            what = (
                tick
                if isinstance(tick, str)
                else {"ok": f"{op.f} ok", "fail": f"{op.f} failed"}.get(op.kind, op.f)
            )
            steps = self._steps.setdefault(msg, [])
            if len(steps) < JOURNEY_STEPS:
                steps.append(Step(at_ms=op.t_ms, actor=op.actor, what=what, note=op.note))
            else:
                last = steps[-1]
                if not last.note.endswith(MORE):
                    steps[-1] = replace(last, note=f"{last.note} {MORE}".strip())
            self._built.pop(msg, None)
            if msg not in self._eventful and _eventful(steps):
                self._eventful.add(msg)
        if len(self._steps) > BOOK_MESSAGES:
            plain = [m for m in self._steps if m not in self._eventful]
            for m in plain[: len(self._steps) - BOOK_MESSAGES]:
                del self._steps[m]
                self._built.pop(m, None)
                self._forgotten += 1

    def journeys(self) -> tuple[tuple[Journey, ...], int]:
        """The journeys kept, and how many messages there were."""
        order = list(self._steps)
        eventful = [m for m in order if m in self._eventful][-JOURNEYS:]
        room = JOURNEYS - len(eventful)
        plain = [m for m in order if m not in self._eventful][-room:] if room else []
        kept = set(eventful) | set(plain)
        return tuple(self._journey(m) for m in order if m in kept), len(order) + self._forgotten

    def _journey(self, msg: str) -> Journey:
        if msg not in self._built:
            # each process narrates in batches of its own: a step may be stored a moment
            # after a later step of another process (A's commit after the relay's publish)
            st = sorted(self._steps[msg], key=lambda s: s.at_ms)
            bad = any(s.what in BAD_STEPS for s in st)
            self._built[msg] = Journey(msg=msg, steps=tuple(st), path=path_of(st), bad=bad)
        return self._built[msg]


def journeys(ops: Iterable[Op]) -> tuple[tuple[Journey, ...], int]:
    """Each message's journey in a history, and how many messages there were."""
    book = JourneyBook()
    book.add(ops)
    return book.journeys()


EVENTFUL = frozenset(
    {
        "duplicate",
        "twice",
        "claim",
        "check",
        "discarded",
        "gave-up",
        "reconciled",
        "error",
        "rolled-back",
        "crash",
    }
)


def _eventful(steps: list[Step]) -> bool:
    seen: set[tuple[str, str]] = set()
    for s in steps:
        if (
            s.what in EVENTFUL
            or s.what.endswith(" failed")
            or s.actor == NEMESIS
            or (s.actor, s.what) in seen
        ):
            return True
        seen.add((s.actor, s.what))
    return False
