"""The TUI through Pilot, on the real cluster: live tables, filter, pause, help, launcher, run view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from rich.text import Text
from textual.app import App
from textual.pilot import Pilot

from app.cluster import ClusterInfo
from app.core import Core
from app.tui.app import CoordscopeApp
from app.tui.screens.dashboard import DashboardScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.launcher import LauncherScreen
from app.tui.screens.run_view import RunScreen
from app.tui.widgets.entity_table import EntityTable
from app.tui.widgets.lanes import Lanes
from collectors.families.runs import Run
from scenarios.runner import catalogue
from tests.conftest import LOCAL_NODES, redis_client, settings_for, until
from tests.tui.harness import ErrorsFail


class Harness(ErrorsFail, CoordscopeApp):
    """The app under test: any error, raised or toasted, fails the test."""


@pytest.fixture
async def tui(cluster: ClusterInfo) -> AsyncIterator[tuple[Harness, Pilot[None]]]:
    app = Harness(Core(settings_for(cluster)))
    app.errors = []
    async with app.run_test(size=(160, 48)) as pilot:
        await app.core.observatory.wait_synced(10)
        yield app, pilot
    assert app.errors == []


def table(app: App[None], table_id: str) -> EntityTable:
    screen = app.screen_stack[0]
    return screen.query_one(f"#{table_id}", EntityTable)


def column(t: EntityTable, key: str) -> list[str]:
    return [cell.plain if isinstance(cell, Text) else str(cell) for cell in t.get_column(key)]


async def rendered(pilot: Pilot[None], predicate: Any, what: str, timeout: float = 8.0) -> None:
    """Wait until the screen shows something (the app never idles, so we poll the widgets)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"the TUI never showed {what}")
        await pilot.pause(0.05)


async def test_dashboard_lists_nodes_and_a_third_party_lock_live(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    app, pilot = tui
    await rendered(pilot, lambda: table(app, "nodes").row_count == len(LOCAL_NODES), "every node")
    assert set(column(table(app, "nodes"), "id")) == set(LOCAL_NODES)
    lock = redis_client(cluster).lock("acct:42:lock", timeout=30)
    assert lock.acquire(blocking=False)
    token = lock.local.token.decode()

    def shows_token() -> bool:  # cut to HOLDER_LIMIT on screen; enter shows it whole
        holders = column(table(app, "locks"), "holder")
        return len(holders) == 1 and len(holders[0]) >= 20 and token.startswith(holders[0].rstrip("…"))

    await rendered(pilot, shows_token, "the redis-py lock's holder")
    lock.release()
    await rendered(pilot, lambda: table(app, "locks").row_count == 0, "the lock released")


async def test_hostile_names_render_as_plain_text(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    app, pilot = tui
    names = [
        "acct:[bold red]markup[/]:lock",
        "acct:\x1b[31mansi\x1b[0m:lock",
        "acct:<img src=x onerror=alert(1)>:lock",
    ]
    r = redis_client(cluster)
    for name in names:
        r.set(name, "0" * 32, px=60000)
    await rendered(pilot, lambda: table(app, "locks").row_count == 3, "the hostile locks")
    shown = set(column(table(app, "locks"), "name"))
    expected = {
        "acct:[bold red]markup[/]:lock",
        "acct:\\x1b[31mansi\\x1b[0m:lock",
        "acct:<img src=x onerror=alert(1)>:lock",
    }
    # long names are cut with an ellipsis, never interpreted
    assert {
        next(e for e in expected if e == s or (s.endswith("…") and e.startswith(s[:-1]))) for s in shown
    } == (expected)
    for cell in table(app, "locks").get_column("name"):
        assert isinstance(cell, Text) and not any("bold" in str(s.style) for s in cell.spans)


async def test_filter_pause_and_help(tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo) -> None:
    app, pilot = tui
    r = redis_client(cluster)
    r.set("alpha:lock", "0" * 32, px=60000)
    r.set("beta:lock", "1" * 32, px=60000)
    await rendered(pilot, lambda: table(app, "locks").row_count == 2, "two locks")
    await pilot.press("slash")
    await pilot.press(*"beta")
    await rendered(pilot, lambda: column(table(app, "locks"), "name") == ["beta:lock"], "the filter")
    await pilot.press("escape")
    await rendered(pilot, lambda: table(app, "locks").row_count == 2, "the filter cleared")

    await pilot.press("p")
    assert app.paused and "PAUSED" in app.sub_title
    r.set("gamma:lock", "2" * 32, px=60000)
    await until(app.core.bus, lambda st: st.get("lock", "redis:gamma:lock") is not None, "gamma")
    await pilot.pause(0.3)
    assert table(app, "locks").row_count == 2  # frozen while paused
    await pilot.press("p")
    await rendered(pilot, lambda: table(app, "locks").row_count == 3, "the resumed view")

    await pilot.press("question_mark")
    assert isinstance(app.screen, HelpScreen)
    await pilot.press("x")
    assert isinstance(app.screen, DashboardScreen)


async def test_launcher_runs_a_scenario_into_the_run_view(tui: tuple[Harness, Pilot[None]]) -> None:
    app, pilot = tui
    await pilot.press("r")
    assert isinstance(app.screen, LauncherScreen)
    launcher = app.screen
    launcher.query_one("#param-rounds").value = "3"  # type: ignore[attr-defined]
    launcher.query_one("#param-hold_ms").value = "60"  # type: ignore[attr-defined]
    launcher.query_one("#param-fencing").value = "off"  # type: ignore[attr-defined]
    launcher.query_one("#fault-pause-holder").value = True  # type: ignore[attr-defined]
    launcher.query_one("#param-clients").value = "99"  # type: ignore[attr-defined]
    await pilot.click("#run")
    assert isinstance(app.screen, LauncherScreen)  # refused, with the reason shown
    assert "at most 16" in str(launcher.query_one("#launch-error").render())
    launcher.query_one("#param-clients").value = "4"  # type: ignore[attr-defined]
    await pilot.pause(0.3)  # a Button ignores clicks while it still shows the last press
    await pilot.click("#run")
    await rendered(pilot, lambda: isinstance(app.screen, RunScreen), "the run view")
    screen = app.screen
    assert isinstance(screen, RunScreen)

    def finished() -> bool:
        run = screen.current()
        return isinstance(run, Run) and run.status != "running"

    await rendered(pilot, finished, "the run to finish", timeout=30)
    run = screen.current()
    assert isinstance(run, Run) and run.status == "violated"
    verdict = str(screen.query_one("#verdict").render())
    assert "VIOLATED" in verdict and "client-" in verdict
    lanes = screen.query_one("#lanes", Lanes)
    drawn = lanes.render().plain
    assert "client-1" in drawn and "▲" in drawn  # lanes with the violation marked
    assert "┊" in drawn and "where the verdict found it broken" in drawn  # and the verdict's moment
    await pilot.press("escape")
    assert isinstance(app.screen, DashboardScreen)

    await pilot.press("r")  # the launcher opens on what was run last, as it was run
    again = app.screen
    assert isinstance(again, LauncherScreen) and again.selected == "lock-redis"
    await pilot.pause()
    shown = {n: again.query_one(f"#param-{n}").value for n in ("rounds", "hold_ms", "fencing", "clients")}  # type: ignore[attr-defined]
    assert shown == {"rounds": "3", "hold_ms": "60", "fencing": "off", "clients": "4"}
    assert again.query_one("#fault-pause-holder").value is True  # type: ignore[attr-defined]
    assert again.query_one("#fault-kill-holder").value is False  # type: ignore[attr-defined]
    await pilot.press("escape")


async def test_launcher_switches_scenarios_and_shows_each_ones_form(tui: tuple[Harness, Pilot[None]]) -> None:
    app, pilot = tui
    await pilot.press("r")
    launcher = app.screen
    assert isinstance(launcher, LauncherScreen)
    specs = {s.name: s for s in catalogue()}
    for name in ("idempotency", "lock-zk", "lock-redis", "idempotency"):  # the same ids come back
        await pilot.click(f"#pick-{name}")
        await pilot.pause()
        spec = specs[name]
        shown = {w.id for w in launcher.query("#form .param > *") if w.id}
        assert shown == {f"param-{p.name}" for p in spec.all_params()}
        ticks = {w.id for w in launcher.query("#faults Checkbox")}
        assert ticks == {f"fault-{f.name}" for f in spec.faults}
        assert spec.title in str(launcher.query_one("#summary").render())
    await pilot.press("escape")
    assert not isinstance(app.screen, LauncherScreen)


async def test_command_palette_offers_every_scenario_and_fault(tui: tuple[Harness, Pilot[None]]) -> None:
    app, _ = tui
    titles = [c.title for c in app.get_system_commands(app.screen)]
    for spec in catalogue():
        assert f"Run {spec.name}" in titles
        for fault in spec.faults:
            assert f"Run {spec.name} with {fault.name}" in titles


async def test_enter_on_a_zookeeper_lock_shows_its_chain(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo, zk_root: str
) -> None:
    import threading

    from kazoo.recipe.lock import Lock as KazooLock

    from app.tui.screens.entity_detail import EntityScreen
    from tests.conftest import zk_client

    app, pilot = tui
    path = f"{zk_root}/order-7"
    clients = [zk_client(cluster) for _ in range(2)]
    try:
        first = KazooLock(clients[0], path, identifier="worker-A")
        assert first.acquire(timeout=5)
        second = KazooLock(clients[1], path, identifier="worker-B")
        waiter = threading.Thread(target=second.acquire, kwargs={"timeout": 20})
        waiter.start()
        await rendered(
            pilot, lambda: column(table(app, "locks"), "waiters") == ["worker-B"], "the lock with its waiter"
        )
        table(app, "locks").focus()
        await pilot.press("enter")
        await rendered(pilot, lambda: isinstance(app.screen, EntityScreen), "the lock screen")
        body = str(app.screen.query_one("#entity-body").render())
        assert "worker-A" in body and "worker-B" in body and "watches" in body
        first.release()
        await rendered(
            pilot,
            lambda: "nobody waits" in str(app.screen.query_one("#entity-body").render()),
            "the hand-over, live",
        )
        await pilot.press("escape")
        second.release()
        waiter.join(5)
    finally:
        for c in clients:
            c.stop()
            c.close()


async def test_a_redlock_run_shows_its_attempts_table(tui: tuple[Harness, Pilot[None]]) -> None:
    from textual.widgets import DataTable

    app, pilot = tui
    run = await app.core.start_run("lock-redlock", {"rounds": "2", "hold_ms": "50"}, [])
    app.action_run_view(run.id)
    await rendered(
        pilot,
        lambda: isinstance(app.screen, RunScreen) and bool(app.screen.query("#run-table")),
        "the run view",
    )
    screen = app.screen
    assert isinstance(screen, RunScreen)
    attempts = screen.query_one("#run-table", DataTable)

    await rendered(pilot, lambda: attempts.row_count >= 4, "the attempts", timeout=20)
    cells = ["".join(str(c) for c in attempts.get_row_at(i)[2:5]) for i in range(attempts.row_count)]
    assert all(set(c) <= set("■□✖") and len(c) == 3 for c in cells), cells  # a column per master
    await app.core.runner.wait(run.id)


async def test_a_lock_on_every_master_keeps_the_locks_table_on_screen(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    """A DataTable column only grows: one wide "where" once pushed every later column off
    the 160-column screen for good."""
    app, pilot = tui
    token = "5f0c8c1e9a7b4d2e8f3a6b1c0d9e7f21"
    clients = [redis_client(cluster, name) for name in ("redis-1", "redis-2", "redis-3")]
    try:
        for c in clients:
            c.set("acct:wide:lock", token, px=60_000)
        locks = table(app, "locks")
        wide = "redis-1■ replica-1✓ redis-2■ redis-3■"
        await rendered(
            pilot, lambda: [g.strip() for g in column(locks, "grants")] == [wide], "the lock on every master"
        )
        assert column(locks, "fence") == ["–"]  # the token is the holder: not shown twice
        # everything but the layout (last, the least needed) is on the 160-column screen
        shown = sum(c.get_render_width(locks) for k, c in locks.columns.items() if k != "layout")
        assert shown <= locks.size.width, (shown, locks.size.width)
    finally:
        for c in clients:
            c.delete("acct:wide:lock")
            c.close()


async def test_an_idempotency_run_fills_the_services_and_marks_panels(
    tui: tuple[Harness, Pilot[None]],
) -> None:
    app, pilot = tui
    run = await app.core.start_run("idempotency", {"orders": "6", "work_ms": "200"}, [])
    await rendered(pilot, lambda: table(app, "services").row_count == 3, "three payment services", timeout=20)
    assert set(column(table(app, "services"), "role")) == {"payment-service"}
    await rendered(
        pilot, lambda: "COMPLETED" in column(table(app, "marks"), "state"), "a completed mark", timeout=20
    )
    owners = [
        o
        for o, s in zip(
            column(table(app, "marks"), "owner"), column(table(app, "marks"), "state"), strict=True
        )
        if s == "COMPLETED"
    ]
    assert owners and all(o.startswith("pay-") for o in owners)
    done = await app.core.runner.wait(run.id)
    assert done.status == "held", done.error
    await rendered(pilot, lambda: table(app, "services").row_count == 0, "the services gone", timeout=20)


async def test_a_big_family_shows_one_window_of_rows_and_says_how_many(
    tui: tuple[Harness, Pilot[None]], cluster: ClusterInfo
) -> None:
    app, pilot = tui
    redis_client(cluster).mset({f"many:item:{i:04d}": "x" for i in range(620)})
    title = app.screen_stack[0].query_one("#title-keys")

    def says() -> bool:
        return "of 62" in str(title.render())

    await rendered(pilot, says, "the keys panel counting 620+ keys, 500 shown")
    assert table(app, "keys").row_count == 500
    assert "(500 of 62" in str(title.render())
