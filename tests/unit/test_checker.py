"""The mutual-exclusion checker and the lanes, on hand-written histories."""

from __future__ import annotations

from collectors.runs import Op, lanes
from scenarios.locks.mutex import MutexMonitor, check_mutex, first_overlap


class H:
    """A tiny history builder: ``h.op(t, actor, kind, f, ...)``."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def op(self, t: int, actor: str, kind: str, f: str, **kw: object) -> H:
        if f == "write":
            kw.setdefault("key", "R")
        self.ops.append(Op(index=len(self.ops), t_ms=t, actor=actor, kind=kind, f=f, **kw))  # type: ignore[arg-type]
        return self


def paused_holder(fencing_rejects: bool) -> H:
    h = H()
    h.op(0, "client-1", "ok", "acquire", fence=1, ttl_ms=100)
    h.op(1, "client-1", "info", "pause")
    h.op(120, "client-2", "ok", "acquire", fence=2, ttl_ms=100)
    h.op(130, "client-2", "ok", "write", fence=2)
    h.op(131, "client-2", "ok", "release")
    h.op(200, "client-1", "info", "resume")
    h.op(
        201,
        "client-1",
        "fail" if fencing_rejects else "ok",
        "write",
        fence=1,
        data={"seen": 2} if fencing_rejects else {},
    )
    h.op(202, "client-1", "fail", "release")
    return h


def test_overlapping_accepted_writes_violate_and_name_both_holders() -> None:
    verdict = check_mutex(paused_holder(False).ops, "L", "R", final_value=1)
    assert not verdict.holds
    assert set(verdict.actors) == {"client-1", "client-2"}
    assert verdict.at_ms == 120
    assert verdict.keys == ("L", "R")
    assert any("lost update" in f for f in verdict.findings)
    assert "client-1 (fence 1)" in verdict.summary and "client-2 (fence 2)" in verdict.summary


def test_fencing_rejection_keeps_the_invariant_and_is_reported() -> None:
    verdict = check_mutex(paused_holder(True).ops, "L", "R", final_value=1)
    assert verdict.holds
    assert any("rejected by fencing: client-1 (fence 1)" in f for f in verdict.findings)
    assert not any("went backwards" in f for f in verdict.findings)


def test_sequential_holds_hold() -> None:
    h = H()
    for i, actor in enumerate(["a", "b", "c"]):
        h.op(i * 10, actor, "ok", "acquire", fence=i + 1)
        h.op(i * 10 + 5, actor, "ok", "write", fence=i + 1)
        h.op(i * 10 + 6, actor, "ok", "release")
    assert check_mutex(h.ops, "L", "R", final_value=3).holds


def test_rightful_holder_rejected_means_the_fence_went_backwards() -> None:
    h = H()
    h.op(0, "a", "ok", "acquire", fence=7)
    h.op(1, "a", "ok", "write", fence=7)
    h.op(50, "b", "ok", "acquire", fence=1)
    h.op(51, "b", "fail", "write", fence=1, data={"seen": 7})
    verdict = check_mutex(h.ops, "L", "R", final_value=1)
    assert verdict.holds
    assert any("went backwards" in f for f in verdict.findings)


def test_lanes_clip_leases_at_release_and_keep_them_past_a_pause() -> None:
    h = paused_holder(False)
    h.op(210, "nemesis", "info", "fault", value="kill-node")
    h.op(260, "nemesis", "info", "heal")
    h.op(300, "client-3", "invoke", "acquire")
    h.op(305, "client-3", "info", "crash")
    h.op(250, "checker", "info", "violation", value='["client-1", "client-2"]')
    by_actor = {lane.actor: lane for lane in lanes(h.ops)}
    c1 = {s.kind: s for s in by_actor["client-1"].spans}
    assert (c1["lease"].start_ms, c1["lease"].end_ms) == (0, 100)  # expired while paused
    assert (c1["pause"].start_ms, c1["pause"].end_ms) == (1, 200)
    assert c1["hold"].outcome == "lost"  # its release failed: the lock was no longer its own
    c2 = {s.kind: s for s in by_actor["client-2"].spans}
    assert (c2["lease"].start_ms, c2["lease"].end_ms) == (120, 131)  # released early
    assert [t.kind for t in by_actor["client-1"].ticks] == ["write", "violation"]
    assert {t.kind for t in by_actor["client-2"].ticks} == {"write", "violation"}
    (fault,) = by_actor["nemesis"].spans
    assert (fault.kind, fault.start_ms, fault.end_ms, fault.label) == ("fault", 210, 260, "kill-node")
    c3 = by_actor["client-3"]
    assert c3.spans[0].outcome == "crashed" and c3.ticks[0].kind == "crash"


def test_overlapping_holds_on_two_different_resources_are_not_a_violation() -> None:
    # lock-compare: a Redis client and a ZooKeeper client hold their own locks at once
    h = H()
    h.op(0, "redis-1", "ok", "acquire", fence=1)
    h.op(0, "zk-1", "ok", "acquire", fence=7)
    h.op(5, "redis-1", "ok", "write", fence=1, key="R-redis")
    h.op(6, "zk-1", "ok", "write", fence=7, key="R-zk")
    h.op(7, "redis-1", "ok", "release")
    h.op(8, "zk-1", "ok", "release")
    assert first_overlap(h.ops) is None
    h.op(9, "zk-2", "ok", "acquire", fence=8)
    h.op(10, "zk-3", "ok", "acquire", fence=9)
    h.op(11, "zk-2", "ok", "write", fence=8, key="R-zk")
    h.op(12, "zk-3", "ok", "write", fence=9, key="R-zk")
    pair = first_overlap(h.ops)
    assert pair is not None and {pair[0].actor, pair[1].actor} == {"zk-2", "zk-3"}


def test_overlap_is_decided_by_the_order_of_operations_not_the_millisecond() -> None:
    # lock-redis with ttl_ms=100, hold_ms=99: client-1's lease ran out as it wrote; client-3
    # was granted the lock (t=110) before client-1's write completed (t=110), both accepted
    h = H()
    h.op(10, "client-1", "ok", "acquire", fence=1, ttl_ms=100)
    h.op(110, "client-1", "invoke", "write", fence=1)
    h.op(110, "client-3", "ok", "acquire", fence=2, ttl_ms=100)
    h.op(110, "client-1", "ok", "write", fence=1)
    h.op(111, "client-1", "fail", "release")
    h.op(150, "client-3", "ok", "write", fence=2)
    verdict = check_mutex(h.ops, "L", "R", final_value=2)
    assert not verdict.holds and set(verdict.actors) == {"client-1", "client-3"}
    # the same timestamps with the grant recorded after the write completed: no overlap
    h2 = H()
    for op in (h.ops[0], h.ops[1], h.ops[3], h.ops[4], h.ops[2], h.ops[5]):
        h2.op(op.t_ms, op.actor, op.kind, op.f, fence=op.fence)
    assert check_mutex(h2.ops, "L", "R", final_value=2).holds


def test_live_judging_keeps_only_what_open_holds_could_overlap() -> None:
    monitor = MutexMonitor()
    index = 0
    for round_ in range(50):
        for c in range(16):
            actor = f"client-{c}"
            for kind, f in (("ok", "acquire"), ("ok", "write"), ("ok", "release")):
                op = Op(
                    index=index,
                    t_ms=index,
                    actor=actor,
                    kind=kind,
                    f=f,
                    fence=index,
                    key="R" if f == "write" else "",
                )
                assert monitor.feed(op) is None
                index += 1
            assert len(monitor.resources["R"].recent) <= 1, (round_, c)
    assert monitor.resources["R"].accepted == 800
