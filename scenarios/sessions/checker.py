"""The session run's verdict, from its history alone.

Invariant: a logged-in user stays logged in, across instances, until the idle timeout;
nobody sees another user's session or cart.

What the history holds (ops of :mod:`scenarios.sessions.session`): each user's
requests (``f="request"``, key the path, data ``served_by``, ``code``, the ``user``
and ``cart`` the app answered with); the fixation probe's (actor ``attacker``); the
run's read of a rotated session's old keys (``f="old-id"``); the expiry it watched
(``f="expire"``).

A 401 to a logged-in user is premature when, even at its latest, the app could not
have found the session idle for the timeout: the 401 *completed* less than the idle
timeout after the last request that touched the session was *sent*. Anything later is
a legitimate expiry, and said so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from collectors.runs import RUNNER, Op, Verdict

INVARIANT = (
    "a logged-in user stays logged in, across instances, until the idle timeout; "
    "nobody sees another user's session or cart"
)
ATTACKER = "attacker"


@dataclass
class Account:
    """One user, as its requests in the history tell it."""

    logged_in: bool = False
    touched_at: int | None = None
    """When the last request that touched the session was sent (ms of the run)."""
    instances: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    kicked: int = 0
    """401s while logged in (premature or not)."""
    expired: int = 0
    """Of those, the ones after the idle timeout."""
    unavailable: int = 0
    cart: int = 0
    last_served: str = ""


Breach = tuple[Op, str, tuple[str, ...]]


def accounts(ops: Sequence[Op], idle_ms: int) -> tuple[dict[str, Account], list[Breach]]:
    """Every user's account and every breach of the invariant, in history order: what the
    verdict judges, and the table the run keeps while it goes."""
    sent = {(op.actor, str(op.data.get("span", ""))): op.t_ms for op in ops if op.kind == "invoke"}
    users: dict[str, Account] = defaultdict(Account)
    breaches: list[Breach] = []
    for op in ops:
        if op.f == "old-id" and op.kind == "fail":
            breaches.append((op, f"the pre-login session id {op.value} is still in the store: {op.note}", ()))
        if op.f != "request" or op.kind == "invoke":
            continue
        sent_ms = sent.get((op.actor, str(op.data.get("span", ""))), op.t_ms)
        code = op.data.get("code")
        served = str(op.data.get("served_by", "?"))
        if op.actor == ATTACKER:
            if code == 200 and op.data.get("user"):
                breaches.append(
                    (op, f"the pre-login session id opened {op.data.get('user')}'s session on {served}", ())
                )
            continue
        u = users[op.actor]
        if code == 200:
            seen = op.data.get("user")
            cart = op.data.get("cart") or []
            foreign = [i for i in cart if not str(i).startswith(f"{op.actor}:")]
            if op.key not in ("visit", "logout") and seen != op.actor:
                breaches.append((op, f"{op.actor} was served {seen!r}'s session by {served}", (op.actor,)))
            elif foreign:
                breaches.append(
                    (op, f"{op.actor}'s cart on {served} holds {', '.join(map(str, foreign))}", (op.actor,))
                )
            u.instances[served] = u.instances.get(served, 0) + 1
            u.ok += 1
            u.cart = len(cart)
            u.last_served = served
            if op.key == "logout":
                u.logged_in, u.touched_at = False, None
            elif op.key != "visit":  # an anonymous visit logs nobody in
                u.logged_in, u.touched_at = True, sent_ms
        elif code == 401 and u.logged_in:
            u.kicked += 1
            idle = op.t_ms - (u.touched_at or 0)
            if idle < idle_ms:
                breaches.append(
                    (
                        op,
                        f"{op.actor} was logged out by {served} at t={op.t_ms} ms, at most {idle} ms "
                        f"after its last request (idle timeout {idle_ms // 1000} s)",
                        (op.actor,),
                    )
                )
            else:
                u.expired += 1
            u.logged_in, u.touched_at = False, None
        elif code != 401:
            u.unavailable += 1
    return users, breaches


def check(ops: Sequence[Op], params: Mapping[str, str | int]) -> Verdict:
    users, breaches = accounts(ops, int(params.get("idle_s", 0)) * 1000)
    findings: list[str] = []
    findings += _findings(ops, users)
    if breaches:
        first, what, actors = min(breaches, key=lambda b: b[0].t_ms)
        more = f"; {len(breaches) - 1} more" if len(breaches) > 1 else ""
        return Verdict(
            holds=False,
            invariant=INVARIANT,
            summary=f"violated: {what}{more}",
            actors=actors or (first.actor,),
            keys=tuple(k for k in (str(first.data.get("key", "")),) if k),
            at_ms=first.t_ms,
            ops=(first.index,),
            findings=tuple(findings),
        )
    requests = sum(u.ok for u in users.values())
    spread = max((len(u.instances) for u in users.values()), default=0)
    return Verdict(
        holds=True,
        invariant=INVARIANT,
        summary=f"held: {len(users)} user(s), {requests} request(s) answered, each user served by up to "
        f"{spread} instance(s) without losing its login; nobody saw another's session",
        findings=tuple(findings),
    )


def _findings(ops: Sequence[Op], users: Mapping[str, Account]) -> list[str]:
    out = []
    for name, u in sorted(users.items()):
        where = ", ".join(f"{i} ×{n}" for i, n in sorted(u.instances.items())) or "nobody"
        extra = f", {u.expired} legitimate expiry(ies)" if u.expired else ""
        extra += f", {u.unavailable} request(s) unanswered or 5xx" if u.unavailable else ""
        out.append(f"{name}: served by {where}{extra}")
    for op in ops:
        if (op.f == "expire" and op.actor != RUNNER) or (
            op.actor == RUNNER and op.f in ("notifications", "old-id", "fault-unused") and op.note
        ):
            out.append(op.note)
    return out
