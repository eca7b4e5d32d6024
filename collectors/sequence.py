"""One key's events in the order they were applied, judged: in sequence, none twice.

Events of an order are numbered 1..n. Applying event ``k`` while some ``j < k``
has not been applied is *out of order*; applying one again is *twice*; an event
never applied is *lost* (only the caller knows ``n``). The ordering scenario's
checker and the rings family (which marks breached orders on both screens)
judge with this one function, so the screens and the verdict cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class SequenceBreach(NamedTuple):
    kind: str
    """``out-of-order`` | ``twice``"""
    position: int
    """Which application (0-based, in the order applied) breached."""
    seq: int
    before: int
    """out-of-order: the lowest event not applied yet; twice: the position of the first."""


def sequence_breaches(applied: Iterable[int]) -> list[SequenceBreach]:
    """Every breach in ``applied`` (event numbers in the order they were applied)."""
    first: dict[int, int] = {}
    found: list[SequenceBreach] = []
    lowest_missing = 1
    for position, seq in enumerate(applied):
        if seq in first:
            found.append(SequenceBreach("twice", position, seq, first[seq]))
            continue
        if seq > lowest_missing:
            found.append(SequenceBreach("out-of-order", position, seq, lowest_missing))
        first[seq] = position
        while lowest_missing in first:
            lowest_missing += 1
    return found


def missing(applied: Iterable[int], last: int) -> list[int]:
    """The events 1..last never applied."""
    done = set(applied)
    return [s for s in range(1, last + 1) if s not in done]
