"""The consistent-hash ring alone: Dubbo's point derivation pinned, stable routing, even-ish
shares, and what moves when a worker joins or leaves.

Tolerances are measured, not wished: over 3..8 workers and five naming schemes
(``127.0.0.1:2088x``, ``worker-N``, ``wN``, ``10.0.0.N:20880``, ``A``..``H``) the
worst share was 17% off 1/n (``worker-8``), and 3 → 4 workers moved 23.2–26.4% of
10,000 keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from scenarios.ordering import hash_ring
from scenarios.ordering.hash_ring import RING_SIZE, HashRing, digest_points, key_point

DUBBO = ("127.0.0.1:20880", "127.0.0.1:20881", "127.0.0.1:20882")
KEYS = [f"order-{i}" for i in range(10_000)]


def names(n: int) -> list[str]:
    return [f"worker-{i}" for i in range(n)]


def test_a_key_goes_to_the_same_worker_every_time_and_on_every_build() -> None:
    first, second = HashRing.build(names(5)), HashRing.build(names(5))
    for key in KEYS[:500]:
        assert first.node_for(key) == first.node_for(key) == second.node_for(key)


@pytest.mark.parametrize("n", range(1, 9))
def test_each_worker_has_160_virtual_nodes_sorted_around_the_circle(n: int) -> None:
    ring = HashRing.build(names(n))
    points = ring.points()
    assert len(points) == 160 * n
    assert [p.point for p in points] == sorted(p.point for p in points)
    assert all(0 <= p.point < RING_SIZE and 0 <= p.angle < 360 for p in points)
    for worker in ring.workers:
        assert sum(p.worker == worker for p in points) == 160


def test_vnodes_round_down_to_whole_digests_as_dubbo_does() -> None:
    assert len(HashRing.build(names(3), vnodes=10).points()) == 3 * 8


@pytest.mark.parametrize("n", range(3, 9))
@pytest.mark.parametrize(
    "name",
    [lambda i: f"127.0.0.1:{20880 + i}", lambda i: f"worker-{i}", lambda i: f"10.0.0.{i + 1}:20880"],
    ids=["loopback-ports", "worker-N", "hosts"],
)
def test_shares_sum_to_one_and_each_is_within_a_fifth_of_even(n: int, name: Callable[[int], str]) -> None:
    ring = HashRing.build([name(i) for i in range(n)])
    shares = ring.share()
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    for share in shares.values():
        assert share == pytest.approx(1 / n, rel=0.20)


def test_a_share_is_the_fraction_of_keys_the_worker_gets() -> None:
    ring = HashRing.build(names(4))
    counts = dict.fromkeys(ring.workers, 0)
    for key in KEYS:
        counts[ring.node_for(key)] += 1
    for worker, share in ring.share().items():
        assert counts[worker] / len(KEYS) == pytest.approx(share, abs=0.02)


def test_adding_a_fourth_worker_moves_about_a_quarter_of_the_keys_all_to_it() -> None:
    before, after = HashRing.build(names(3)), HashRing.build(names(4))
    moves = before.moved(after, KEYS)
    assert 0.20 <= len(moves) / len(KEYS) <= 0.30  # measured 0.2638
    assert {m.after for m in moves} == {"worker-3"}
    assert all(m.before == before.node_for(m.key) for m in moves)
    # what moves is what the new worker now owns: nothing else changes hands
    assert len(moves) == sum(after.node_for(k) == "worker-3" for k in KEYS)


def test_removing_a_worker_moves_only_its_own_keys() -> None:
    before = HashRing.build(names(4))
    after = HashRing.build(["worker-0", "worker-2", "worker-3"])
    moves = before.moved(after, KEYS)
    assert {m.before for m in moves} == {"worker-1"}
    assert {m.key for m in moves} == {k for k in KEYS if before.node_for(k) == "worker-1"}
    assert 0.20 <= len(moves) / len(KEYS) <= 0.30  # measured 0.2557


def test_the_same_ring_moves_nothing() -> None:
    assert HashRing.build(names(3)).moved(HashRing.build(names(3)), KEYS) == ()


def test_points_are_the_digest_bytes_as_dubbo_composes_them() -> None:
    # Dubbo's hash(digest, h): byte 4h+3 << 24 | 4h+2 << 16 | 4h+1 << 8 | 4h, masked to 32 bits
    for text in ("127.0.0.1:208800", "worker-339", "order-7", "ünïcode-1"):
        d = hashlib.md5(text.encode("utf-8")).digest()
        expected = tuple(
            ((d[4 * h + 3] << 24) | (d[4 * h + 2] << 16) | (d[4 * h + 1] << 8) | d[4 * h]) & 0xFFFFFFFF
            for h in range(4)
        )
        assert digest_points(text) == expected
    assert key_point("order-7") == digest_points("order-7")[0]


def test_the_ring_agrees_with_a_java_treemap_built_the_same_way() -> None:
    # Figures printed by a throwaway Java program: MessageDigest("MD5") over UTF-8,
    # Dubbo's hash(digest, h), TreeMap.put for 3 addresses x 40 digests,
    # tailMap(point, true).firstEntry() falling back to firstEntry().
    assert digest_points("127.0.0.1:208800") == (4002238455, 3716746652, 640252868, 3049475639)
    assert digest_points("127.0.0.1:2088239")[3] == 3228903006
    ring = HashRing.build(DUBBO)
    points = ring.points()
    assert (len(points), points[0].point, points[-1].point) == (480, 14483979, 4287108655)
    java = {
        "order-1": (2844098414, "127.0.0.1:20881"),
        "order-2": (2107476248, "127.0.0.1:20881"),
        "order-3": (3003334393, "127.0.0.1:20880"),
        "order-42": (208355663, "127.0.0.1:20882"),
        "order-1000": (2945746601, "127.0.0.1:20882"),
        "1": (943901380, "127.0.0.1:20882"),
        "order-360": (4290858949, "127.0.0.1:20881"),  # past the last point: wraps to the first
        "order-455": (4292839752, "127.0.0.1:20881"),
    }
    for key, (point, worker) in java.items():
        assert (key_point(key), ring.node_for(key)) == (point, worker)
    assert ring.vnode_for("order-360") == points[0]


def test_a_point_two_workers_share_goes_to_the_later_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # TreeMap.put replaces: with every digest on the same four points, the last worker owns them all
    monkeypatch.setattr(hash_ring, "digest_points", lambda text: (1, 2, 3, 4))
    ring = HashRing.build(["a", "b", "c"])
    assert [(p.point, p.worker) for p in ring.points()] == [(1, "c"), (2, "c"), (3, "c"), (4, "c")]
    assert ring.share() == {"a": 0.0, "b": 0.0, "c": 1.0}


@pytest.mark.parametrize(
    ("workers", "vnodes", "why"),
    [([], 160, "at least one worker"), (["a", "b", "a"], 160, "distinct"), (["a"], 3, "vnodes must be")],
    ids=["no-workers", "duplicate", "too-few-vnodes"],
)
def test_a_ring_that_cannot_route_is_refused(workers: list[str], vnodes: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        HashRing.build(workers, vnodes=vnodes)
