"""One lock in full: its grants (a cell per master, with replication state) or, for
ZooKeeper, the chain of contenders — the holder, then each waiter with an arrow to the
predecessor it watches. Opened with enter on a row of the locks table; live."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from app.tui.model import Model
from app.tui.text import fmt_ms, safe
from app.tui.widgets.columns import clock
from app.tui.widgets.entity_table import now_ms
from collectors.events import Lock


def _line(text: Text, *parts: tuple[object, str]) -> None:
    text.append("\n")
    for value, style in parts:
        text.append_text(safe(value, style))


def describe(lock: Lock) -> Text:
    text = safe(lock.name, "bold")
    ttl = "–"
    if lock.expires_at_ms is not None:
        ttl = fmt_ms(lock.expires_at_ms - now_ms())
    _line(
        text,
        (f"{lock.store} · {lock.layout} · ", "dim"),
        ("split " if lock.split else "holder ", "bold red" if lock.split else "dim"),
        (
            " ≠ ".join(lock.holders) if lock.split else (lock.holder or "free"),
            "bold red" if lock.split else "bold green" if lock.holder else "dim",
        ),
        (f" · fence {lock.fence}" if lock.fence is not None else "", ""),
        (f" · TTL {ttl}", "yellow" if lock.expires_at_ms else "dim"),
    )
    if lock.stale:
        _line(text, (f"stale: a node is down; data as of {clock(lock.as_of_ms)}", "bold red"))
    if lock.detail:
        _line(text, (lock.detail, "yellow"))
    if lock.store == "zookeeper":
        _chain(text, lock)
    else:
        _grants(text, lock)
    return text


def _grants(text: Text, lock: Lock) -> None:
    text.append("\n")
    _line(text, ("grants (one per master)", "bold"))
    for g in lock.grants:
        mine = g.token == lock.token
        _line(
            text,
            ("  ■ " if mine else "  □ ", "green" if mine else "red"),
            (g.node, "bold"),
            (f"  {g.holder or '?'}", ""),
            (f"  TTL {fmt_ms(g.ttl_ms)}", "dim"),
            ("  (node down)" if g.stale else "", "red"),
        )
        for r in g.replicas:
            state = (
                ("has it", "green")
                if r.present and r.same_value
                else (("has another value", "yellow") if r.present else ("not yet", "yellow"))
            )
            _line(text, ("      ↳ replica ", "dim"), (r.node, ""), (f": {state[0]}", state[1]))
    if lock.waiters:
        text.append("\n")
        _line(text, ("waiters", "bold"))
        for w in lock.waiters:
            since = f" since {clock(w.since_ms)}" if w.since_ms else ""
            polls = f", {w.polls} attempts" if w.polls is not None else ""
            _line(text, ("  … ", "dim"), (w.id, ""), (f"{since}{polls}", "dim"))


def _chain(text: Text, lock: Lock) -> None:
    text.append("\n")
    _line(text, ("queue (lowest sequence first; each waiter watches the one above it)", "bold"))
    if lock.holder is not None:
        _line(
            text,
            ("  ● ", "green"),
            (lock.holder, "bold green"),
            (f"  {lock.token or ''}", "dim"),
            (f"  czxid {lock.fence}" if lock.fence is not None else "", "dim"),
        )
    depth = 1
    for w in lock.waiters:
        pad = "  " + "   " * depth
        _line(text, (pad[:-1] + "▲", "cyan"))
        watches = f"  watches {w.watches}" if w.watches else ""
        _line(
            text,
            (pad[:-1] + "└─ ", "cyan"),
            (w.id, "bold"),
            (f"  seq {w.seq}" if w.seq is not None else "", "dim"),
            (watches, "dim"),
            (f"  session {w.session}" if w.session else "", "dim"),
            (f"  queued {clock(w.since_ms)}" if w.since_ms else "", "dim"),
        )
        depth += 1
    if not lock.waiters:
        _line(text, ("  nobody waits", "dim"))


class LockScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Close"), ("enter", "dismiss", "Close")]
    DEFAULT_CSS = """
    LockScreen { align: center middle; }
    #lock { width: 120; height: auto; max-height: 90%; border: thick $primary;
            background: $surface; padding: 1 2; }
    """

    def __init__(self, model: Model, lock_id: str) -> None:
        super().__init__()
        self.model = model
        self.lock_id = lock_id

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="lock"):
            yield Static(id="lock-body")

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(0.25, self.redraw)

    def redraw(self) -> None:
        lock = self.model.entities["lock"].get(self.lock_id)
        body = self.query_one("#lock-body", Static)
        if isinstance(lock, Lock):
            body.update(describe(lock))
        else:
            body.update(safe("this lock is gone (released or expired) — esc closes", "dim"))
