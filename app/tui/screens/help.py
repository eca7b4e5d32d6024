"""Help on ``?``: the keys, and what the panels and the lanes mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
coordscope — what the stores hold, live

Keys
  r        run a scenario (launcher)      ctrl+p   command palette (scenarios too)
  v        run view (lanes and verdict)   [ / ]    older / newer run (run view)
  /        filter every table             esc      clear the filter / go back
  p        pause updates (again: resume)  s        stop the run shown (run view)
  d        dashboard                      q        quit
  enter    a lock in full (grants, replicas; ZooKeeper: the queue, who watches whom)

  ?        this help

Panels
  Locks      who holds each lock, its fencing token, the TTL counting down, who waits
             (and how often they poll); "where" shows each master's grant (■ agrees
             with the holder, □ differs) and whether its replicas have the key (✓/✗).
  Sessions   Spring Session, connect-redis, Flask-Session, starsessions, a container's
             opaque blob (its size), and keys named like a session with a TTL: user,
             state, the instance that served it last, idle TTL, attributes.
  Marks      idempotency marks: state, owner, lease and TTL counting down, the response.
  Queues     streams (each group's pending entries, re-read every second), RQ, lists.
  Rings      ordering runs: the hash ring, each worker's share, queue depth and pending.
  Services   a run's processes (app instances, workers, HAProxy with its servers' state).
  Nodes      every Redis node and ZooKeeper ensemble: status, the time of the last good
             data when it is down, events received (~coalesced), gaps resynced, and how
             changes reach us (keyspace notifications, scanning, watches).
  Event log  acquisitions, releases, expiries, sessions, gaps, node status, verdicts.

Run view lanes
  █ hold   ─ waiting   ▒ paused   ▀ lease (TTL)   red shading: a fault window
  ● write accepted   ✗ write rejected (fencing)   ▲ violation   ✖ crash
  ━ a request, coloured by the instance that served it   → login   ← logout
  ⊘ logged out by the app   ⌛ session expired   (the legend under the lanes says all)

Press any key to close.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 96; height: auto; max-height: 90%; border: thick $primary;
            background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP, markup=False)

    def on_key(self) -> None:
        self.dismiss(None)

    def on_click(self) -> None:
        self.dismiss(None)
