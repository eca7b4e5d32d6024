"""A screen fed by the bus: updates that arrive before it is mounted, or while the app
tears it down, are skipped (it draws everything the model holds when it mounts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from textual.css.query import NoMatches
from textual.screen import Screen


class LiveScreen(Screen[None]):
    _live = False

    def on_mount(self) -> None:
        self._live = True
        self.redraw()

    def on_unmount(self) -> None:
        self._live = False

    def redraw(self) -> None:
        """Draw everything from the model (subclasses)."""

    def live(self, update: Callable[[], None]) -> None:
        if not self._live:
            return
        with contextlib.suppress(NoMatches):  # the app is closing: our widgets are gone
            update()
