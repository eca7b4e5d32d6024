"""The ring of an ordering run, under its lanes: who gets each order's events.

A table of the workers — arc share of the circle, orders the ring sends them,
queue depth, pending entries and each consumer's own — and a table of the
orders' applied sequences, the very application that broke a sequence in red
(the rings family judges it, as the checker does). Routes that do not hash
(round-robin, zk-seq) have no arcs: the panel says so and shows the rest.

A ring is rebuilt whenever a worker's queue changes, many times a second under
load, so both tables are kept in step by row key — rows added, changed cells
updated, gone rows removed — never cleared and refilled.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from app.tui.cells import render
from app.tui.text import safe, set_cell
from collectors.families.nodes import clock
from collectors.families.rings import Ring, RingOrder, RingWorker, order_cell, share_text

WORKER_COLUMNS = ("worker", "arc share", "orders", "depth", "pending", "consumers (pending)")
ORDER_COLUMNS = ("order", "state", "applied · owner · moved")
BREACHES_NAMED = 5
"""Breached orders the title names (the table marks every one)."""


class RingPanel(Vertical):
    DEFAULT_CSS = """
    RingPanel { height: auto; border: round $primary-background-lighten-2; padding: 0 1; }
    RingPanel > Static { height: auto; }
    RingPanel > Horizontal { height: auto; margin-top: 1; }
    RingPanel DataTable { height: auto; max-height: 14; }
    RingPanel #ring-workers { width: auto; margin-right: 3; }
    RingPanel #ring-orders { width: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: dict[str, dict[str, tuple[str, ...]]] = {"ring-workers": {}, "ring-orders": {}}
        self._ring_id = ""

    def compose(self) -> ComposeResult:
        yield Static(id="ring-title")
        with Horizontal():  # side by side: the workers' table is short, the orders' long
            yield DataTable(id="ring-workers", cursor_type="none", zebra_stripes=True)
            yield DataTable(id="ring-orders", cursor_type="none", zebra_stripes=True)

    def on_mount(self) -> None:
        for table_id, columns in (("ring-workers", WORKER_COLUMNS), ("ring-orders", ORDER_COLUMNS)):
            table = self.query_one(f"#{table_id}", DataTable)
            for i, label in enumerate(columns):
                table.add_column(safe(label, "bold"), key=str(i))

    def show(self, ring: Ring | None) -> None:
        """Draw ``ring`` (None: hide the panel)."""
        self.display = ring is not None
        if ring is None:
            return
        if ring.id != self._ring_id:  # another run's ring: nothing of the last one stays
            self._ring_id = ring.id
            for table_id, shown in self._shown.items():
                self.query_one(f"#{table_id}", DataTable).clear()
                shown.clear()
        self.query_one("#ring-title", Static).update(title(ring))
        hashing = bool(ring.points)
        self._sync("ring-workers", [(w.name, worker_row(w, hashing)) for w in ring.workers])
        self._sync("ring-orders", [(o.order, order_row(o)) for o in ring.orders])

    def _sync(self, table_id: str, rows: Sequence[tuple[str, tuple[Text, ...]]]) -> None:
        table = self.query_one(f"#{table_id}", DataTable)
        shown = self._shown[table_id]
        keep = {key for key, _ in rows}
        for key in [k for k in shown if k not in keep]:
            table.remove_row(key)
            del shown[key]
        for key, texts in rows:
            plain = tuple(t.plain + str(t.spans) for t in texts)
            if key not in shown:
                table.add_row(*texts, key=key)
            elif shown[key] != plain:
                for i, text in enumerate(texts):
                    if shown[key][i] != plain[i]:  # a longer cell widens its column
                        set_cell(table, key, str(i), text)
            shown[key] = plain


def title(ring: Ring) -> Text:
    """How the ring routes, what broke, and its last change."""
    if ring.points:
        text = safe(f"{ring.route} ring v{ring.version}", "bold")
        text.append_text(safe(f" · {ring.vnodes} virtual nodes per worker", "dim"))
    else:
        text = safe(f"{ring.route}: no hash ring", "bold")
        text.append_text(safe(", each event goes to the next worker in turn", "dim"))
    text.append_text(safe(f" · {len(ring.orders) + ring.more_orders} orders"))
    if ring.breached:
        names = [o.order for o in ring.orders if o.breach]
        listed = ", ".join(names[:BREACHES_NAMED]) + (", …" if len(names) > BREACHES_NAMED else "")
        text.append_text(safe(f", {ring.breached} breached: {listed}", "bold red"))
    if ring.split:
        text.append_text(safe(f", {ring.split} in two queues now", "bold yellow"))
    if ring.more_orders:
        text.append_text(safe(f" (the first {len(ring.orders)} listed)", "dim"))
    if ring.change:
        text.append("\n")
        text.append_text(safe(f"last change {clock(ring.changed_ms)} ", "dim"))
        text.append_text(safe(ring.change, "yellow" if ring.moved else ""))
    text.no_wrap = False
    return text


def worker_row(w: RingWorker, hashing: bool = True) -> tuple[Text, ...]:
    """Its arc and orders only where the route hashes (elsewhere no order is anyone's)."""
    name = safe(w.name, "bold")
    if w.leaving:
        name.append_text(safe(" leaving", "yellow"))
    consumers = ", ".join(f"{c} {p}" for c, p in w.consumers)
    return (
        name,
        safe(share_text(w.share), "" if w.share is not None else "dim"),
        safe(w.orders) if hashing else safe("–", "dim"),
        _count(w.depth),
        _count(w.pending),
        safe(consumers or "–", "" if consumers else "dim"),
    )


def _count(n: int | None) -> Text:
    """A queue's count: ? when not read yet, yellow while not zero."""
    return safe("?", "dim") if n is None else safe(n, "yellow" if n else "dim")


def order_row(o: RingOrder) -> tuple[Text, ...]:
    name = safe(f"✘ {o.order}", "bold red") if o.breach else safe(o.order, "bold")
    return (name, safe(o.state or "–", "" if o.state else "dim"), render(order_cell(o)))
