"""An ordering run's state written into a real Redis the way the scenario writes it: the
run's hash, its router's ring (:meth:`Router.fields`, as :meth:`Router.publish` writes it),
a worker's queue with its consumer group, and orders as workers applied them. The screens'
tests draw what the collectors make of it, without the scenario's timing."""

from __future__ import annotations

import json
import time

import redis

from collectors.layouts import coordscope
from scenarios.ordering.router import Router


def write_run(r: redis.Redis, run_id: str, status: str = "held") -> None:
    """A finished run's hash (a finished one: nobody has to keep it alive)."""
    now = int(time.time() * 1000)
    r.hset(
        coordscope.run_key(run_id),
        mapping={
            "scenario": "ordering",
            "status": status,
            "params": json.dumps({"route": "consistent-hash", "workers": "3"}),
            "faults": "[]",
            "started_ms": str(now - 5000),
            "ended_ms": str(now),
            "alive_ms": str(now),
            "owner": "tests",
        },
    )


def publish(r: redis.Redis, router: Router) -> None:
    """The ring, as the router writes it whenever it changes."""
    r.hset(router.key, mapping=router.fields())  # type: ignore[arg-type]


def queue(r: redis.Redis, run_id: str, worker: str, entries: int, delivered: int) -> None:
    """``entries`` events in ``worker``'s queue, ``delivered`` of them read (pending) by its
    first incarnation, none acknowledged."""
    key = coordscope.worker_queue_key(run_id, worker)
    r.xgroup_create(key, coordscope.WORKER_GROUP, id="0", mkstream=True)
    for i in range(entries):
        r.xadd(key, {"order": f"order-{i + 1}", "seq": "1", "event": "created"})
    if delivered:
        r.xreadgroup(coordscope.WORKER_GROUP, f"{worker}.0", {key: ">"}, count=delivered)


def applied(r: redis.Redis, run_id: str, order: str, seqs: list[int], worker: str, state: str) -> None:
    """``order``'s events applied in this order (its log, as the worker's script appends it)."""
    log = ";".join(f"{s} {worker}.0 {100 * i} 1-{i}" for i, s in enumerate(seqs))
    r.hset(coordscope.order_key(run_id, order), mapping={"state": state, "seq": str(seqs[-1]), "log": log})
