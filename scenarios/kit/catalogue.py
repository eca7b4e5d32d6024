"""What a scenario offers: its parameters (variants are parameters with choices),
its faults, and the invariant its verdict judges — and the validation of what a
user asks for, with one clear message per mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ScenarioError(ValueError):
    """A request that cannot run: unknown scenario, bad parameter, unknown fault."""


@dataclass(frozen=True)
class Param:
    name: str
    default: str
    help: str
    choices: tuple[str, ...] = ()
    """Non-empty for a variant (``release=lua|del``)."""
    minimum: int | None = None
    maximum: int | None = None
    """Bounds for an integer parameter."""

    @property
    def is_variant(self) -> bool:
        return bool(self.choices)

    def parse(self, raw: str) -> str | int:
        if self.choices:
            if raw not in self.choices:
                raise ScenarioError(f"{self.name} must be one of {', '.join(self.choices)} (got {raw!r})")
            return raw
        try:
            value = int(raw)
        except ValueError:
            raise ScenarioError(f"{self.name} must be a whole number (got {raw!r})") from None
        if self.minimum is not None and value < self.minimum:
            raise ScenarioError(f"{self.name} must be at least {self.minimum} (got {value})")
        if self.maximum is not None and value > self.maximum:
            raise ScenarioError(f"{self.name} must be at most {self.maximum} (got {value})")
        return value

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "default": self.default, "help": self.help}
        if self.choices:
            body["choices"] = list(self.choices)
        else:
            body["type"] = "int"
            body["min"] = self.minimum
            body["max"] = self.maximum
        return body


@dataclass(frozen=True)
class FaultSpec:
    name: str
    help: str
    needs_local_cluster: bool = False
    """It signals server processes, so only the embedded cluster can take it."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "needs_local_cluster": self.needs_local_cluster}


KEEP = Param("keep", "off", "keep the scenario's keys after the run (for inspection)", choices=("off", "on"))


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    title: str
    summary: str
    invariant: str
    params: tuple[Param, ...]
    faults: tuple[FaultSpec, ...]
    show: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)
    live_faults: bool = True
    """Can a fault be injected while it runs, or only given at start?"""
    needs: tuple[str, ...] = ()
    """What it runs on besides Redis: ``zookeeper``, ``postgres``."""
    not_on_redis_cluster: str = ""
    """Why it cannot run where Redis is a Redis Cluster (empty: it can)."""

    def all_params(self) -> tuple[Param, ...]:
        return (*self.params, KEEP)

    def param(self, name: str) -> Param:
        for p in self.all_params():
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.all_params())
        raise ScenarioError(f"{self.name} has no parameter {name!r} (it has {known})")

    def fault(self, name: str) -> FaultSpec:
        for f in self.faults:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.faults)
        raise ScenarioError(f"{self.name} has no fault {name!r} (it has {known})")

    def resolve(self, given: dict[str, str]) -> dict[str, str | int]:
        """Defaults overlaid with what the user set, each parsed and checked."""
        values: dict[str, str | int] = {p.name: p.parse(p.default) for p in self.all_params()}
        for name, raw in given.items():
            values[name] = self.param(name).parse(str(raw))
        return values

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "invariant": self.invariant,
            "show": self.show,
            "params": [p.to_json() for p in self.all_params()],
            "variants": {p.name: list(p.choices) for p in self.all_params() if p.is_variant},
            "faults": [f.to_json() for f in self.faults],
            "sources": list(self.sources),
            "live_faults": self.live_faults,
            "needs": list(self.needs),
        }


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["fencing=off", "clients=6"]`` -> dict; a malformed pair is a ScenarioError."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ScenarioError(f"--set takes NAME=VALUE (got {pair!r})")
        out[name.strip()] = value.strip()
    return out
