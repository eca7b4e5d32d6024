"""The Redis Cluster watcher's pure parts: reading CLUSTER NODES, showing slots."""

from __future__ import annotations

from collectors.redis_cluster import parse_nodes, slots_text

NODES = """\
r4 127.0.0.1:30004@31004 slave p1 0 17239 4 connected
p2 127.0.0.1:30002@31002 master - 0 16232 2 connected 5461-10922
p3 127.0.0.1:30003@31003 master - 0 18243 3 connected 10923-16383 [16000->-p2]
p1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
p6 127.0.0.1:30006@31006 master,fail - 16232 16232 6 disconnected
h7 :0@0 handshake,noaddr - 0 0 0 disconnected
"""


def test_cluster_nodes_are_read_with_roles_primaries_and_slots() -> None:
    nodes = {n.address: n for n in parse_nodes(NODES)}
    assert set(nodes) == {f"127.0.0.1:3000{i}" for i in (1, 2, 3, 4, 6)}  # no handshake
    replica = nodes["127.0.0.1:30004"]
    assert not replica.is_primary and replica.primary_id == nodes["127.0.0.1:30001"].node_id
    assert nodes["127.0.0.1:30001"].slots == ((0, 5460),) and nodes["127.0.0.1:30001"].is_primary
    # a slot being migrated away is still served by its owner's range, not a range of its own
    assert nodes["127.0.0.1:30003"].slots == ((10923, 16383),)
    dead = nodes["127.0.0.1:30006"]
    assert dead.failed and dead.is_primary and dead.slots == ()


def test_slots_are_shown_as_ranges_with_a_count() -> None:
    assert slots_text(((0, 5460),)) == "0-5460 (5461)"
    assert slots_text(((7, 7), (0, 5))) == "0-5,7 (7)"
    assert slots_text(()) == ""
