"""The real page in Debian's headless Chromium, driven by Playwright, served by uvicorn."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from app.cluster import ClusterInfo
from app.core import Core
from tests.conftest import redis_client, serving, settings_for, wait_until

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def web(cluster: ClusterInfo) -> Iterator[str]:
    with serving(Core(settings_for(cluster))) as url:
        wait_until(lambda: synced(url), 30, "every Redis node scanned once")
        yield url


def synced(url: str) -> bool:
    """Has the server read every Redis node once? (Before, a run may come and go unseen
    while the collectors still read what earlier tests left: their runs' histories.)"""
    with urllib.request.urlopen(f"{url}/api/state?kind=node", timeout=5) as reply:
        nodes = json.load(reply)["nodes"]
    return all(str(n.get("scan", "")).startswith("scanned") for n in nodes if n["store"] == "redis")


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
        yield tab
        browser.close()
        assert errors == [], errors


def test_pressing_run_shows_a_holder_then_the_verdict(web: str, page: Page) -> None:
    page.goto(web)
    expect(page.locator("#conn")).to_have_text("live")
    form = page.locator("#scenario-lock-redis")
    form.locator("input[name=rounds]").fill("4")
    form.locator("select[name=fencing]").select_option("off")
    form.locator("input[name=fault][value=pause-holder]").check()
    page.click("#run-lock-redis")
    holder = page.locator("#locks tbody tr td.holder")
    expect(holder.first).to_contain_text("client-", timeout=10_000)
    # grants and holders wrap between pieces, never inside a name, and the row fits its panel
    grants = page.locator("#locks tbody tr td.grants span.part")
    expect(grants.first).to_have_text("redis-1■")
    expect(page.locator("#locks tbody tr td.waiters span.part").first).to_contain_text("client-")
    for table in ("#locks", "#nodes"):
        width, room = page.evaluate(
            f"(t => [t.offsetWidth, t.closest('.panel').clientWidth])(document.querySelector('{table}'))"
        )
        assert width <= room, f"{table} is {width}px wide in a panel with room for {room}px"
    expect(page.locator("#lanes rect.span-hold").first).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("violated", timeout=30_000)
    verdict = page.locator("#verdict")
    expect(verdict).to_contain_text("VIOLATED")
    expect(verdict).to_contain_text("both wrote")
    expect(page.locator("#lanes path.tick-violation").first).to_be_attached()
    expect(page.locator("#lanes line.violation-line")).to_have_count(1)
    expect(page.locator("#legend .violation-swatch")).to_have_count(1)
    expect(page.locator("#legend")).to_contain_text("where the verdict found it broken")
    page.screenshot(path="/tmp/coordscope-browser.png", full_page=True)


def test_hostile_key_names_are_text(web: str, page: Page, cluster: ClusterInfo) -> None:
    names = [
        "acct:<img src=x onerror=alert(1)>:lock",
        "acct:[bold red]markup[/]:lock",
        "acct:\x1b[31mansi\x1b[0m:lock",
        "acct:<script>alert(2)</script>:lock",
    ]
    r = redis_client(cluster)
    for name in names:
        r.set(name, "0" * 32, px=60000)
    page.goto(web)
    rows = page.locator("#locks tbody tr")
    expect(rows).to_have_count(len(names), timeout=10_000)
    shown = page.locator("#locks tbody td.name").all_text_contents()
    assert sorted(shown) == sorted(names)
    assert page.locator("#locks img, #locks script, #log img").count() == 0


def test_a_zookeeper_lock_opens_as_a_chain(web: str, page: Page, cluster: ClusterInfo, zk_root: str) -> None:

    from kazoo.recipe.lock import Lock as KazooLock

    from tests.conftest import zk_client

    path = f"{zk_root}/order-7"
    clients = [zk_client(cluster) for _ in range(3)]
    locks = [KazooLock(c, path, identifier=f"worker-{x}") for c, x in zip(clients, "ABC", strict=True)]
    try:
        assert locks[0].acquire(timeout=5)
        waiting = [threading.Thread(target=lk.acquire, kwargs={"timeout": 20}) for lk in locks[1:]]
        for queued, t in enumerate(waiting, start=2):  # B queues before C, for sure
            t.start()
            wait_until(lambda n=queued: len(clients[0].get_children(path)) == n, 10, f"{queued} contenders")
        page.goto(web)
        row = page.locator("#locks tbody tr", has_text=path)
        expect(row).to_contain_text("worker-A", timeout=10_000)
        expect(row.locator("td.waiters")).to_contain_text("worker-C", timeout=10_000)
        row.click()
        holder = page.locator("#detail-lock .line", has_text="●")
        expect(holder).to_contain_text("worker-A")
        waiters = page.locator("#detail-lock .line", has_text="└─")
        expect(waiters).to_have_count(2)
        expect(waiters.nth(0)).to_contain_text("worker-B")
        expect(waiters.nth(1)).to_contain_text("worker-C")
        expect(waiters.nth(1)).to_contain_text("watches")
        locks[0].release()
        expect(holder).to_contain_text("worker-B", timeout=5_000)  # live
        for lock, t in zip(locks[1:], waiting, strict=True):
            t.join(10)  # its acquire has returned: it holds
            lock.release()
    finally:
        for c in clients:
            c.stop()
            c.close()


def test_an_idempotency_run_shows_services_marks_and_charges(web: str, page: Page) -> None:
    page.goto(web)
    expect(page.locator("#conn")).to_have_text("live")
    page.click("#pick-idempotency")
    form = page.locator("#scenario-idempotency")
    form.locator("input[name=orders]").fill("8")
    form.locator("input[name=work_ms]").fill("300")
    form.locator("input[name=fault][value=lost-reply]").check()
    page.click("#run-idempotency")
    services = page.locator("#services tbody tr")
    expect(services).to_have_count(3, timeout=20_000)
    expect(services.first.locator("td.status")).to_have_text("up")
    expect(services.first.locator("td.role")).to_have_text("payment-service")
    marks = page.locator("#marks tbody tr")
    expect(marks.filter(has_text="COMPLETED").first).to_be_visible(timeout=20_000)
    completed = marks.filter(has_text="COMPLETED").first
    expect(completed.locator("td.owner")).to_contain_text("pay-")
    expect(completed.locator("td.response")).to_contain_text("200")
    expect(page.locator("#lanes path.tick-charge").first).to_be_attached(timeout=10_000)
    expect(page.locator("#run-status")).to_have_text("held", timeout=40_000)
    expect(page.locator("#run-table tbody tr")).to_have_count(8)
    expect(page.locator("#legend")).to_contain_text("charge")
    expect(services).to_have_count(0, timeout=20_000)  # stopped by the run, unregistered
    page.screenshot(path="/tmp/coordscope-idempotency.png", full_page=True)


def test_the_queues_panel_shows_a_consumer_group_and_a_list(
    web: str, page: Page, cluster: ClusterInfo
) -> None:
    r = redis_client(cluster)
    r.xgroup_create("orders", "billing", id="0", mkstream=True)
    r.xadd("orders", {"order": "1"})
    r.xadd("orders", {"order": "2"})
    r.xreadgroup("billing", "worker-1", {"orders": ">"}, count=1)
    r.rpush("mail:queue", "welcome:ann")
    page.goto(web)
    rows = page.locator("#queues tbody tr")
    expect(rows).to_have_count(2, timeout=10_000)
    expect(page.locator("#queues")).to_contain_text("1 pending", timeout=5_000)
    expect(page.locator("#queues")).to_contain_text("lag 1")
    page.screenshot(path="/tmp/coordscope-queues.png", full_page=True)


def test_a_new_run_is_followed_past_the_first_page_of_runs(
    cluster: ClusterInfo, web: str, page: Page
) -> None:
    """A store that keeps more runs than one page (they stay a day): the page still shows a
    run started now, though it sorts after the 300 the snapshot carried."""
    r = redis_client(cluster, "redis-3")
    old = [f"coordscope:run:aaa-old-{i:03d}" for i in range(320)]
    pipe = r.pipeline(transaction=False)
    for i, key in enumerate(old):
        pipe.hset(key, mapping={"scenario": "lock-redis", "status": "held", "started_ms": 1_000 + i})
    pipe.execute()
    try:
        wait_until(lambda: len(r.keys("coordscope:run:aaa-old-*")) == 320, 10, "old runs written")
        page.goto(web)
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#run-select option")).to_have_count(300, timeout=15_000)  # one page of runs
        form = page.locator("#scenario-lock-redis")
        form.locator("input[name=rounds]").fill("2")
        page.click("#run-lock-redis")
        expect(page.locator("#run-head .run-id")).to_contain_text("lock-redis-", timeout=15_000)
        expect(page.locator("#run-status")).to_have_text("held", timeout=30_000)
        assert page.locator("#run-select option").count() <= 300  # trimmed: the oldest went
        assert page.locator("#run-select").input_value().startswith("lock-redis-")
    finally:
        r.delete(*old)
        r.close()
