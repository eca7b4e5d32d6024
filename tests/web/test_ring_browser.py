"""The ring of an ordering run on the page, in Debian's headless Chromium: virtual nodes and
orders on the circle, the workers' legend, the applied sequences — and a redraw when a
worker joins, written into a real Redis as the router writes its ring."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from app.cluster import ClusterInfo
from collectors.layouts import coordscope
from scenarios.ordering.router import Router
from tests.conftest import redis_client
from tests.tools import ordering_store
from tests.web.test_browser import page, web  # noqa: F401 - the server and browser fixtures

pytestmark = pytest.mark.browser

RUN = "ordering-000001-web"
HOSTILE = "order-<img src=x onerror=alert(1)>"
ORDERS = [*(f"order-{i}" for i in range(1, 12)), HOSTILE]


def test_the_ring_is_drawn_and_redrawn_when_a_worker_joins(
    web: str,  # noqa: F811 - a fixture
    page: Page,  # noqa: F811 - a fixture
    cluster: ClusterInfo,
) -> None:
    r = redis_client(cluster)
    router = Router(RUN, "consistent-hash", ["worker-1", "worker-2", "worker-3"], 160, ORDERS)
    ordering_store.write_run(r, RUN, status="violated")
    ordering_store.queue(r, RUN, "worker-1", 3, 1)
    ordering_store.applied(r, RUN, "order-2", [1, 2, 4, 3], "worker-2", "shipped")
    ordering_store.applied(r, RUN, "order-5", [1, 2], "worker-3", "paid")
    ordering_store.publish(r, router)

    page.goto(web)
    ticks = page.locator("#ring-svg line.vnode")
    expect(ticks).to_have_count(160 * 3, timeout=10_000)
    for w in router.workers:
        expect(page.locator(f'#ring-svg line.vnode[data-worker="{w}"]')).to_have_count(160)
    dots = page.locator("#ring-dots g.order")
    expect(dots).to_have_count(len(ORDERS))
    breached = page.locator("#ring-dots g.order.breached")
    expect(breached).to_have_count(1)
    expect(breached).to_have_attribute("data-order", "order-2")
    # the legend: a row per worker, worker-1's queue with 3 entries, 1 of them pending
    legend = page.locator("#ring-workers tbody tr")
    expect(legend).to_have_count(3)
    w1 = legend.filter(has_text="worker-1")
    expect(w1.locator("td.depth")).to_have_text("3", timeout=5_000)
    expect(w1.locator("td.pending")).to_have_text("1")
    assert router.ring is not None
    expect(w1.locator("td.share")).to_have_text(f"{router.ring.share()['worker-1'] * 100:.1f}%")
    # the sequences: the application that broke order-2 in red, and the order named above
    row = page.locator("#ring-orders tbody tr.breached")
    expect(row).to_have_count(1)
    expect(row.locator("td.order")).to_have_text("order-2")
    expect(row.locator(".seq-bad")).to_have_text("4")
    expect(row.locator(".breach")).to_have_text("out-of-order")
    expect(page.locator("#ring-title")).to_contain_text("1 breached: order-2")
    # untrusted names are text
    expect(page.locator("#ring-orders td.order", has_text=HOSTILE)).to_have_count(1)
    assert page.locator("#ring img").count() == 0

    # a queue moving rebuilds the ring entity, but nothing on the circle changed: kept
    page.evaluate("window.firstTick = document.querySelector('#ring-svg line.vnode')")
    r.xadd(coordscope.worker_queue_key(RUN, "worker-1"), {"order": "order-9", "seq": "1"})
    expect(w1.locator("td.depth")).to_have_text("4", timeout=5_000)
    assert page.evaluate("window.firstTick.isConnected"), "the ticks were rebuilt for a depth change"

    # a worker joins: the circle is redrawn with its virtual nodes, the moved orders marked
    change = router.reshape([*router.workers, "worker-4"], "+worker-4", 1000)
    ordering_store.publish(r, router)
    expect(ticks).to_have_count(160 * 4, timeout=10_000)
    expect(page.locator('#ring-svg line.vnode[data-worker="worker-4"]')).to_have_count(160)
    assert not page.evaluate("window.firstTick.isConnected")
    assert change.moves
    expect(page.locator("#ring-dots g.order.moved")).to_have_count(len(change.moves))
    expect(dots).to_have_count(len(ORDERS))
    expect(legend).to_have_count(4)
    expect(page.locator("#ring-change")).to_contain_text(f"+worker-4: {len(change.moves)} of {len(ORDERS)}")
    page.locator("#panel-run").screenshot(path="/tmp/coordscope-ring.png")
