"""The session verdict, from hand-made histories: premature logouts, legitimate expiry,
another user's session or cart, the fixation probe, the rotated id's keys."""

from __future__ import annotations

from typing import Any

from collectors.runs import RUNNER, Op, lanes, legend
from scenarios.sessions.checker import ATTACKER, check

PARAMS = {"idle_s": 10}


class H:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def req(self, sent: int, done: int, actor: str, path: str, code: int | None, served: str = "app-1",
            **data: Any) -> H:  # fmt: skip
        span = f"{actor}#{len(self.ops)}"
        invoke = Op(index=len(self.ops), t_ms=sent, actor=actor, kind="invoke", f="request", key=path,
                    data={"span": span})  # fmt: skip
        self.ops.append(invoke)
        kind = "ok" if code == 200 else "fail" if code else "info"
        body = {"span": span, "served_by": served, "code": code, **data}
        if code == 200 and "user" not in data and path not in ("logout", "visit"):
            body["user"] = actor
        self.ops.append(
            Op(index=len(self.ops), t_ms=done, actor=actor, kind=kind, f="request", key=path, data=body)
        )
        return self


def test_a_user_served_by_every_instance_without_a_logout_holds() -> None:
    h = H().req(0, 5, "u1", "login", 200, "app-1").req(300, 305, "u1", "browse", 200, "app-2")
    h.req(600, 605, "u1", "cart", 200, "app-3", cart=["u1:item-1"]).req(
        900, 905, "u1", "logout", 200, "app-1"
    )
    v = check(h.ops, PARAMS)
    assert v.holds, v.summary
    assert "served by up to 3 instance(s)" in v.summary
    assert "u1: served by app-1 ×2, app-2 ×1, app-3 ×1" in v.findings


def test_a_401_before_the_idle_timeout_is_a_premature_logout() -> None:
    h = H().req(0, 5, "u1", "login", 200, "app-1").req(300, 304, "u1", "browse", 401, "app-2")
    v = check(h.ops, PARAMS)
    assert not v.holds
    assert v.summary.startswith("violated: u1 was logged out by app-2 at t=304 ms, at most 304 ms after")
    assert v.actors == ("u1",) and v.at_ms == 304 and v.ops == (3,)


def test_a_401_after_the_idle_timeout_is_an_expiry_and_holds() -> None:
    h = H().req(0, 5, "u1", "login", 200).req(10_100, 10_104, "u1", "browse", 401, "app-2")
    v = check(h.ops, PARAMS)
    assert v.holds, v.summary
    assert any("1 legitimate expiry" in f for f in v.findings)


def test_the_idle_time_counts_from_when_the_last_touch_was_sent() -> None:
    # the touching request was sent at 0 and answered at 400: a 401 completed at 10 001 may
    # have been decided 10 s after the touch, so it is not called premature
    h = H().req(0, 400, "u1", "login", 200).req(9_990, 10_001, "u1", "browse", 401)
    assert check(h.ops, PARAMS).holds


def test_a_401_to_a_user_never_logged_in_is_no_logout() -> None:
    h = H().req(0, 5, "u1", "browse", 401).req(10, 15, "u1", "login", 200)
    assert check(h.ops, PARAMS).holds


def test_seeing_another_users_session_or_cart_is_a_violation() -> None:
    h = H().req(0, 5, "u1", "login", 200).req(100, 105, "u1", "browse", 200, user="u2")
    v = check(h.ops, PARAMS)
    assert not v.holds and "u1 was served 'u2''s session by app-1" in v.summary
    h = H().req(0, 5, "u1", "login", 200).req(100, 105, "u1", "cart", 200, cart=["u1:a", "u2:b"])
    v = check(h.ops, PARAMS)
    assert not v.holds and "u1's cart on app-1 holds u2:b" in v.summary


def test_the_pre_login_id_opening_a_session_is_a_violation() -> None:
    h = H().req(0, 5, "u1", "login", 200).req(50, 55, ATTACKER, "browse", 200, "app-3", user="u1")
    v = check(h.ops, PARAMS)
    assert not v.holds and v.summary == "violated: the pre-login session id opened u1's session on app-3"
    refused = H().req(0, 5, "u1", "login", 200).req(50, 55, ATTACKER, "browse", 401)
    assert check(refused.ops, PARAMS).holds


def test_a_pre_login_id_left_in_the_store_is_a_violation() -> None:
    h = H().req(0, 5, "u1", "login", 200)
    h.ops.append(
        Op(index=2, t_ms=9, actor=RUNNER, kind="fail", f="old-id", value="abc", note="k still there")
    )
    v = check(h.ops, PARAMS)
    assert not v.holds and "pre-login session id abc is still in the store: k still there" in v.summary


def test_unanswered_requests_are_counted_not_judged() -> None:
    h = (
        H()
        .req(0, 5, "u1", "login", 200)
        .req(100, 105, "u1", "browse", 503)
        .req(200, 900, "u1", "browse", None)
    )
    v = check(h.ops, PARAMS)
    assert v.holds and "u1: served by app-1 ×1, 2 request(s) unanswered or 5xx" in v.findings


def test_request_spans_take_the_instance_as_their_tone_and_the_legend_names_them() -> None:
    h = H().req(0, 5, "u1", "login", 200, "app-2").req(10, 15, "u1", "browse", 200, "app-1")
    drawn = lanes(h.ops)
    assert [(s.kind, s.tone) for s in drawn[0].spans] == [("request", "app-2"), ("request", "app-1")]
    assert [(w, k) for w, k, _ in legend(drawn) if w == "tone"] == [("tone", "app-1"), ("tone", "app-2")]


def test_what_the_run_noticed_is_in_the_findings() -> None:
    h = H().req(0, 5, "u1", "login", 200)
    for f, note in (("fault-unused", "expire came after user-1's last request: not applied"),
                    ("notifications", "keyspace notifications were off for 3.0 s")):  # fmt: skip
        h.ops.append(Op(index=len(h.ops), t_ms=9, actor=RUNNER, kind="info", f=f, note=note))
    h.ops.append(
        Op(index=len(h.ops), t_ms=9, actor="u1", kind="info", f="expire", note="expired 40 ms after")
    )
    v = check(h.ops, PARAMS)
    assert v.holds
    assert v.findings[1:] == (
        "expire came after user-1's last request: not applied",
        "keyspace notifications were off for 3.0 s",
        "expired 40 ms after",
    )
