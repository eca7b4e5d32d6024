"""The txn-outbox checker: each message's journey as the stores hold it at the end.

The run reads, after every service has stopped, A's ``orders`` and ``outbox`` (which
rows exist, which were marked sent), every entry of the stream (which message each
carries), B's ``effects`` and ``inbox``, into the history (``orders``, ``outbox``,
``stream``, ``effects``, ``inbox``, then ``db-read``). Which orders A rolled back is
A's own narration (``rolled-back`` ticks) and the client's answers, also in the history.

The invariant: every committed order has exactly one effect in B, of its amount, and
nothing is published (or applied, or left in A's tables) for an order rolled back.
Publishing twice is *not* a violation — an outbox relay is at least once by design —
it is what the inbox is for; the findings say how often it happened and why (a relay
crash, an ``XADD`` that timed out), how many redeliveries the inbox dropped, which
entries were claimed from a dead consumer, how far the backlog grew.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from collectors.runs import RUNNER, Op, Verdict
from scenarios.kit.problems import Problem, step_of, violated

PRODUCER = "A"
RELAY = "relay"
CLIENT = "client"
INVARIANT = (
    "every committed business row has exactly one effect in B; nothing is published for a rolled-back row"
)


@dataclass
class Stored:
    """One message, from A's commit to B's effect, as the stores hold it."""

    msg: str
    amount: int | None = None
    """The order's amount in A's ``orders`` (None: no order row)."""
    outbox: str = ""
    """``sent``, ``unsent``, or empty: no outbox row."""
    entries: list[str] = field(default_factory=list)
    """The stream entries carrying it."""
    effects: list[tuple[str, int]] = field(default_factory=list)
    """(consumer, amount) of each effect row in B."""
    inbox: str = ""
    """The consumer that recorded it in B's inbox (empty: not there)."""
    rolled_back: bool = False

    @property
    def committed(self) -> bool:
        return self.amount is not None

    def path(self) -> str:
        """``A committed → published ×2 → row sent → applied ×2 by B-1, B-2``."""
        steps = ["A rolled back" if self.rolled_back else "A committed" if self.committed else "A: no order"]
        n = len(self.entries)
        steps.append(f"published ×{n}" if n > 1 else "published" if n else "never published")
        steps.append(
            {"sent": "row marked sent", "unsent": "row never marked sent"}.get(self.outbox, "no row")
        )
        steps.append(f"applied {applied_by(self.effects)}" if self.effects else "never applied")
        return " → ".join(steps)


def applied_by(effects: Sequence[tuple[str, int]]) -> str:
    """``by B-1``, ``×2 by B-1 and B-2``, ``×2, both by B-2``, ``×3 by B-1 (×2) and B-2``."""
    who = Counter(c for c, _ in effects)
    n = len(effects)
    if n == 1:
        return f"by {effects[0][0]}"
    if len(who) == 1:
        return f"×{n}, {'both' if n == 2 else 'all'} by {effects[0][0]}"
    names = [c if k == 1 else f"{c} (×{k})" for c, k in who.items()]
    return f"×{n} by {', '.join(names[:-1])} and {names[-1]}"


def _order(msg: str) -> tuple[int, str]:
    return (len(msg), msg)


def stored(ops: Sequence[Op]) -> dict[str, Stored]:
    """Every message's journey, from the stores' contents read into the history."""
    read = {op.f: op.data for op in ops if op.actor == RUNNER and op.kind == "ok"}
    out: dict[str, Stored] = {}

    def j(msg: object) -> Stored:
        return out.setdefault(str(msg), Stored(str(msg)))

    for msg, amount in read.get("orders", {}).get("rows", []):
        j(msg).amount = int(amount)
    for msg, sent, *_ in read.get("outbox", {}).get("rows", []):
        j(msg).outbox = "sent" if sent else "unsent"
    for entry, msg in read.get("stream", {}).get("entries", []):
        j(msg).entries.append(str(entry))
    for msg, _order_id, amount, consumer, *_ in read.get("effects", {}).get("rows", []):
        j(msg).effects.append((str(consumer), int(amount)))
    for msg, consumer in read.get("inbox", {}).get("rows", []):
        j(msg).inbox = str(consumer)
    for op in ops:
        if (op.actor == PRODUCER and op.data.get("tick") == "rolled-back") or (
            op.actor == CLIENT and op.value == "rolled-back"
        ):
            j(op.data.get("msg", op.key)).rolled_back = True
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    if not any(op.actor == RUNNER and op.f == "db-read" for op in ops):
        raise ValueError("the history has no read of the stores")
    paths = stored(ops)
    problems = [p for jr in paths.values() for p in _problems(ops, jr)]
    findings = _findings(ops, paths)
    if problems:
        return violated(INVARIANT, problems, findings)
    committed = [jr for jr in paths.values() if jr.committed]
    rolled = [jr for jr in paths.values() if jr.rolled_back]
    skipped = sum(1 for op in ops if op.data.get("tick") == "duplicate")
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {len(committed)} committed order(s), each applied exactly once by B"
        + (f"; {len(rolled)} rolled back, never published" if rolled else "")
        + (f"; {skipped} redelivery(ies) skipped by the inbox" if skipped else ""),
        findings=tuple(findings),
    )


def _problems(ops: Sequence[Op], jr: Stored) -> list[Problem]:
    consumers = tuple(dict.fromkeys(c for c, _ in jr.effects))
    if jr.rolled_back:
        left = [
            *(["its order row is in A's database"] if jr.committed else []),
            *(["its outbox row is there"] if jr.outbox else []),
            *([f"published ×{len(jr.entries)}"] if jr.entries else []),
            *([f"applied {applied_by(jr.effects)}"] if jr.effects else []),
        ]
        if not left:
            return []
        moment = step_of(ops, jr.msg, "published", last=True) or step_of(
            ops, jr.msg, "applied", "twice", last=True
        )
        return [Problem(f"{jr.msg} was rolled back by A, yet {', '.join(left)}", jr.msg, consumers, moment)]
    if not jr.committed:
        if not jr.effects and not jr.entries:
            return []
        return [
            Problem(
                f"{jr.msg} was never committed by A, yet: {jr.path()}",
                jr.msg,
                consumers,
                step_of(ops, jr.msg, "applied", "twice", last=True)
                or step_of(ops, jr.msg, "published", last=True),
            )
        ]
    out: list[Problem] = []
    if not jr.effects:
        out.append(
            Problem(
                f"{jr.msg} committed by A but never applied by B: {jr.path()}",
                jr.msg,
                (PRODUCER,),
                step_of(ops, jr.msg, "committed", actor=PRODUCER, last=True),
            )
        )
    elif len(jr.effects) > 1:
        out.append(
            Problem(
                f"{jr.msg} applied {applied_by(jr.effects)}: {jr.path()}",
                jr.msg,
                consumers,
                step_of(ops, jr.msg, "twice", "applied", last=True),
            )
        )
    wrong = [a for _, a in jr.effects if a != jr.amount]
    if wrong:
        out.append(
            Problem(
                f"{jr.msg} applied with amount {wrong[0]}, A committed {jr.amount}",
                jr.msg,
                consumers,
                step_of(ops, jr.msg, "applied", "twice", last=True),
            )
        )
    return out


def _ids(msgs: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(msgs[:limit])
    return shown + (f" and {len(msgs) - limit} more" if len(msgs) > limit else "")


def _findings(ops: Sequence[Op], paths: Mapping[str, Stored]) -> list[str]:
    out: list[str] = []
    committed = [m for m, jr in paths.items() if jr.committed]
    rolled = [m for m, jr in paths.items() if jr.rolled_back]
    entries = sum(len(jr.entries) for jr in paths.values())
    out.append(
        f"{len(committed)} order(s) committed with their outbox row"
        + (f", {len(rolled)} rolled back ({_ids(rolled)})" if rolled else "")
        + f"; {entries} stream entr(ies) published"
    )
    again = [f"{m} ×{len(jr.entries)}" for m, jr in paths.items() if len(jr.entries) > 1]
    if again:
        out.append(f"published more than once (at least once: the inbox's job): {_ids(again)}")
    skipped = [op for op in ops if op.data.get("tick") == "duplicate"]
    if skipped:
        out.append(
            f"{len(skipped)} redelivery(ies) skipped by B's inbox: "
            + _ids([f"{op.data.get('msg')} at {op.actor}" for op in skipped])
        )
    claims: Counter[str] = Counter(op.actor for op in ops if op.data.get("tick") == "claim")
    for actor, n in claims.items():
        msgs = [str(op.data.get("msg")) for op in ops if op.actor == actor and op.data.get("tick") == "claim"]
        out.append(
            f"{actor} claimed {n} pending entr(ies) of a consumer that died (XAUTOCLAIM): {_ids(msgs)}"
        )
    for op in ops:
        if op.f == "crash" and op.kind == "info":
            out.append(f"{op.actor} crashed at {op.t_ms} ms ({op.note})")
    failed = [op for op in ops if op.actor == RELAY and op.data.get("tick") == "error"]
    if failed:
        out.append(f"{len(failed)} relay round(s) failed and were retried (e.g. {failed[0].note})")
    backlog = [op for op in ops if op.actor == RUNNER and op.f == "backlog"]
    if backlog:
        peak = max(backlog, key=lambda op: int(op.data.get("unsent", 0)))
        out.append(
            f"outbox backlog peaked at {peak.data.get('unsent')} unsent row(s) at {peak.t_ms} ms "
            f"(the oldest {peak.data.get('oldest_ms', 0)} ms old), "
            f"{backlog[-1].data.get('unsent')} at the last look ({backlog[-1].t_ms} ms)"
        )
    unsent = [m for m, jr in paths.items() if jr.outbox == "unsent"]
    if unsent:
        out.append(f"{len(unsent)} outbox row(s) never marked sent: {_ids(unsent)}")
    out += _latency(ops)
    return out


def _latency(ops: Sequence[Op]) -> list[str]:
    """A's commit → B's first effect, per message, on the run's time axis (the narration)."""
    commits = {
        op.data.get("msg"): op.t_ms
        for op in ops
        if op.actor == PRODUCER and op.data.get("tick") == "committed"
    }
    applied: dict[object, int] = {}
    for op in ops:
        if op.data.get("tick") == "applied" and op.data.get("msg") in commits:
            applied.setdefault(op.data.get("msg"), op.t_ms)
    lags = sorted(applied[m] - commits[m] for m in applied)
    if not lags:
        return []
    return [
        f"commit → effect (narrated): p50 {statistics.median(lags):.0f} ms, max {lags[-1]} ms "
        f"over {len(lags)} message(s)"
    ]
