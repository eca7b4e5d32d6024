"""``coordscope replay --web`` in Debian's headless Chromium: the scrubber moves the page
through the committed recording (no servers but the page's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.config import Settings
from app.core import Core
from app.replay import Replay
from collectors.recording import read_recording
from tests.conftest import serving
from tests.web.test_browser import page  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.browser

FIXTURE = Path(__file__).parent.parent / "fixtures" / "lock-redis.jsonl"


@pytest.fixture
def replay_web(tmp_path: Path) -> Iterator[tuple[str, Replay]]:
    replay = Replay(read_recording(FIXTURE), playing=False)
    core = Core(Settings(state_dir=tmp_path, redis=(), zookeeper=()), replay)
    with serving(core, probe="/api/replay") as url:
        yield url, replay


def scrub_to(tab: Page, fraction: float) -> None:
    """Click the range input where a user would, to reach ``fraction`` of the recording."""
    box = tab.locator("#replay-scrub").bounding_box()
    assert box is not None
    # a range's thumb runs from half a thumb in from each end: click where its centre would be
    thumb = 16
    x = thumb / 2 + fraction * (box["width"] - thumb)
    tab.locator("#replay-scrub").click(position={"x": x, "y": box["height"] / 2})


def test_the_scrubber_moves_the_lock_table_through_the_recording(
    replay_web: tuple[str, Replay],
    page: Page,  # noqa: F811
) -> None:
    url, replay = replay_web
    rec = replay.recording
    duration = rec.end_ms - rec.start_ms
    page.goto(url)
    expect(page.locator("#replay-bar")).to_be_visible()
    expect(page.locator("#replay-state")).to_have_text("paused")
    expect(page.locator("#replay-elapsed")).to_have_text("0:00 / 0:05")
    expect(page.locator("#panel-scenarios")).to_be_hidden()
    expect(page.locator("#replay-bar")).to_contain_text("replay: read-only")
    holder = page.locator("#locks tbody tr td.holder")
    expect(page.locator("#locks tbody tr")).to_have_count(0)
    scrub_to(page, 2400 / duration)
    expect(holder).to_have_text("client-2")
    assert abs(replay.position_ms() - (rec.start_ms + 2400)) < 150
    expect(page.locator("#replay-elapsed")).to_have_text("0:02 / 0:05")
    page.screenshot(path="/tmp/coordscope-replay.png", full_page=True)
    scrub_to(page, 5600 / duration)
    expect(page.locator("#locks tbody tr")).to_have_count(0)
    expect(page.locator("#log")).to_contain_text("lock-redis")  # the log of that moment
    scrub_to(page, 2400 / duration)
    expect(holder).to_have_text("client-2")
    page.keyboard.press("ArrowRight")  # one second later
    expect(holder).to_have_text("client-3")
    page.click("#replay-toggle")
    expect(page.locator("#replay-state")).to_have_text("playing")
    page.select_option("#replay-speed", "16")
    expect(page.locator("#replay-state")).to_have_text("ended", timeout=10_000)
    expect(page.locator("#replay-elapsed")).to_have_text("0:05 / 0:05")
    assert replay.speed == 16
    expect(page.locator("#run-status")).to_have_text("violated")  # the run's verdict, as recorded
    expect(page.locator("#run-faults button")).to_have_count(0)
