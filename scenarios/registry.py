"""Every scenario, listed once, grouped as the seed's outline (locks, idempotency, ...).
A new scenario is a module in its topic's folder and one line below."""

from __future__ import annotations

from scenarios.idempotency import payment
from scenarios.kit.catalogue import ScenarioError, ScenarioSpec
from scenarios.kit.scenario import Scenario
from scenarios.locks import lock_compare, lock_failover, lock_redis, lock_redlock, lock_zk
from scenarios.messaging import best_effort, outbox, reliable
from scenarios.ordering import ordering
from scenarios.sessions import session
from scenarios.transactions import tcc, two_phase

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        lock_redis.SCENARIO,
        lock_failover.SCENARIO,
        lock_redlock.SCENARIO,
        lock_zk.SCENARIO,
        lock_compare.SCENARIO,
        payment.SCENARIO,
        ordering.SCENARIO,
        session.SCENARIO,
        two_phase.SCENARIO,
        tcc.SCENARIO,
        outbox.SCENARIO,
        reliable.SCENARIO,
        best_effort.SCENARIO,
    )
}


def catalogue() -> list[ScenarioSpec]:
    return [s.spec for s in SCENARIOS.values()]


def scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return SCENARIOS[name]
