"""What every Pilot test's app shares: any error, raised or toasted, fails the test
(as in Dolphie's harness)."""

from __future__ import annotations

from typing import Any

from textual.app import App


class ErrorsFail(App[None]):
    errors: list[str]

    def notify(self, message: str, *args: Any, severity: str = "information", **kw: Any) -> None:
        if severity == "error":
            self.errors.append(str(message))
        super().notify(message, *args, severity=severity, **kw)  # type: ignore[arg-type]
