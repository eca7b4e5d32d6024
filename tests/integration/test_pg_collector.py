"""The PostgreSQL node: polled read-only, shown down when it stops answering — a frozen
server included — and up again when it is back."""

from __future__ import annotations

from app.cluster import ClusterInfo, LocalCluster
from collectors.families.nodes import Node
from tests.conftest import observing, until


def pg(st: object) -> Node | None:
    node = st.node("postgres-1")  # type: ignore[attr-defined]
    return node if isinstance(node, Node) else None


async def test_a_frozen_database_is_shown_down_then_up_again(
    cluster: ClusterInfo, local_cluster: LocalCluster
) -> None:
    async with observing(cluster) as bus:
        await until(bus, lambda st: (n := pg(st)) is not None and n.status == "up", "postgres-1 up")
        node = pg(bus.state)
        assert node is not None and node.store == "postgres" and node.role == "primary"
        assert "prepared transaction" in node.detail and "polled every" in node.feed
        local_cluster.pause("postgres-1")
        try:
            await until(bus, lambda st: (n := pg(st)) is not None and n.status == "down", "down", timeout=10)
            assert (n := pg(bus.state)) is not None and n.as_of_ms is not None
        finally:
            local_cluster.resume("postgres-1")
        await until(bus, lambda st: (n := pg(st)) is not None and n.status == "up", "up again", timeout=10)
