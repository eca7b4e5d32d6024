"""A messaging run on the page: started from its card with a fault, its messages listed
under the lanes, one followed from A to B through a crash of the relay — by its row, and
by its mark on a lane."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.web.test_browser import page, web  # noqa: F401 - the server and browser fixtures

pytestmark = pytest.mark.browser


def test_a_message_is_followed_through_a_relay_crash(
    web: str,  # noqa: F811 - a fixture
    page: Page,  # noqa: F811 - a fixture
) -> None:
    page.goto(web)
    expect(page.locator("#conn")).to_have_text("live")
    page.click("#pick-txn-outbox")
    form = page.locator("#scenario-txn-outbox")
    form.locator("input[name=messages]").fill("12")
    form.locator("input[name=fault_at]").fill("4")
    form.locator("input[name=fault][value=relay-crash-after-publish]").check()
    page.click("#run-txn-outbox")
    expect(page.locator("#run-head .run-id")).to_contain_text("txn-outbox-", timeout=15_000)
    expect(page.locator("#run-status")).to_have_text("held", timeout=60_000)
    rows = page.locator("#journey-list tbody tr")
    expect(rows).to_have_count(12, timeout=10_000)
    expect(page.locator(".journeys-title")).to_contain_text("messages (12)")
    row = page.locator('#journey-list tr[data-msg="o4"]')
    expect(row.locator("td.path")).to_contain_text(
        re.compile(r"relay published → relay crash-point → .*relay published")
    )
    row.click()
    steps = page.locator("#journey li")
    expect(page.locator("#journey")).to_be_visible()
    expect(page.locator("#journey .journey-title")).to_contain_text("message o4: nemesis fault → ")
    text = page.locator("#journey").inner_text()
    # A committed it; the relay published it and was killed before marking it sent; its
    # next life published it again; B applied it once and its inbox skipped the repeat
    assert "crash-point" in text and "duplicate" in text and "applied" in text, text
    assert steps.count() >= 6
    lit = page.locator('#lanes path.tick.followed[data-msg="o4"]')
    expect(lit.first).to_be_attached()
    assert page.locator("#lanes path.tick.faded").count() > 0  # the other messages dimmed
    page.screenshot(path="/tmp/coordscope-journey.png", full_page=True)
    row.click()  # a second click lets it go
    expect(page.locator("#journey")).to_be_hidden()
    assert page.locator("#lanes path.tick.followed").count() == 0
    # a mark on a lane follows its message too
    page.locator('#lanes path.tick-applied[data-msg="o7"]').first.dispatch_event("click")
    expect(page.locator("#journey .journey-title")).to_contain_text("message o7")
    expect(page.locator('#journey-list tr.selected[data-msg="o7"]')).to_have_count(1)
