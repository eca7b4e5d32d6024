"""How lock rows read on the TUI: a split lock must stand out, shared readers must not."""

from __future__ import annotations

from app.tui.widgets.columns import LOCKS
from collectors.events import Lock

HOLDER = next(c for c in LOCKS if c.key == "holder")


def cell(lock: Lock) -> tuple[str, str]:
    text = HOLDER.cell(lock)
    return text.plain, " ".join(str(span.style) for span in text.spans) + " " + str(text.style)


def test_a_free_lock_says_free() -> None:
    assert cell(Lock(id="l", store="redis", name="x", layout="coordscope", holder=None))[0] == "free"


def test_a_redis_lock_split_between_holders_is_red() -> None:
    lock = Lock(
        id="l", store="redis", name="x", layout="coordscope", holder="b", holders=("b", "a[red]"), split=True
    )
    plain, style = cell(lock)
    assert plain == "b ≠ a[red]" and "red" in style  # markup in a name stays text


def test_a_minority_grant_is_named_but_not_alarming() -> None:
    lock = Lock(id="l", store="redis", name="x", layout="coordscope", holder="b", holders=("b", "a"))
    plain, style = cell(lock)
    assert plain == "b +1 minority" and "red" not in style


def test_zookeeper_readers_sharing_a_lock_are_listed_plainly() -> None:
    lock = Lock(id="l", store="zookeeper", name="/x", layout="kazoo", holder="r1", holders=("r1", "r2"))
    plain, style = cell(lock)
    assert plain == "r1, r2" and "red" not in style
