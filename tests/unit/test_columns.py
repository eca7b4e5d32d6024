"""How rows read on both screens: cells described once by the family, drawn by each
screen (a split lock must stand out, shared readers must not; countdowns tick)."""

from __future__ import annotations

from app.tui.cells import render
from collectors.events import Upserted, to_json
from collectors.families import REGISTRY
from collectors.families.base import countdown
from collectors.families.locks import Lock, Locks, holder_cell


def cell(lock: Lock) -> tuple[str, str]:
    text = render(holder_cell(lock))
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


def test_a_countdown_shows_the_time_left_and_warns_under_a_second() -> None:
    assert render(countdown(10_500), now=1_000).plain == "9.5s"
    low = render(countdown(1_400), now=1_000)
    assert low.plain == "0.4s" and "yellow" in str(low.style)
    assert render(countdown(None, 30_000)).plain == "30s"


def test_the_page_gets_the_same_cells_in_every_upsert() -> None:
    lock = Lock(
        id="l", store="redis", name="x", layout="coordscope", holder="b", holders=("b", "a"), split=True
    )
    wire = to_json(Upserted(entity=lock, seq=3))
    row = wire["row"]
    assert len(row) == len(Locks.columns)
    holder = row[[c.key for c in Locks.columns].index("holder")]
    assert holder["p"] == [["b", "bad"], ["≠", "bad"], ["a", "bad"]] and "split" in holder["t"]


def test_every_family_with_a_panel_has_columns_and_a_unique_kind() -> None:
    kinds = [f.kind for f in REGISTRY]
    assert len(set(kinds)) == len(kinds)
    for family in REGISTRY:
        described = family.describe()
        assert described["kind"] == family.kind and described["plural"] == family.plural
        if family.panel != "none":
            assert family.columns, family.kind
