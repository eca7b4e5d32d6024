"""The orders as the store holds them, read by the run: while it goes (a breach marked on
the lanes the moment an order's log shows it; the orders in two queues kept current in
the ring's hash) and at the end (every application into the judged history, and each
order's sequence as the run's table, which stays once the run's keys are gone).

An order's log is parsed by the collectors' own reader
(:func:`collectors.layouts.coordscope.parse_log`) and judged by the one judgement
(:func:`collectors.layouts.coordscope.judged`, over :mod:`collectors.sequence`): the
run, the checker and both screens read the same thing the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from redis.asyncio import Redis

from collectors.layouts import coordscope
from collectors.layouts.coordscope import judged, parse_log
from collectors.layouts.facts import Applied
from collectors.runs import CHECKER, RUNNER
from scenarios.kit.context import RunContext
from scenarios.ordering.checker import lane
from scenarios.ordering.router import Router

WATCH_EVERY_S = 0.2
TABLE_HEADER = ["order", "applied (seq by consumer)", "owner", "breach"]


async def read_logs(store: Redis, run_id: str, orders: list[str]) -> dict[str, tuple[Applied, ...]]:
    """Every order's applications, in the order applied and judged (one pipelined round trip)."""
    pipe = store.pipeline(transaction=False)
    for order in orders:
        pipe.hget(coordscope.order_key(run_id, order), "log")
    replies = await pipe.execute()
    return {
        o: judged(parse_log(r.decode(errors="replace") if r else ""))
        for o, r in zip(orders, replies, strict=True)
    }


async def watch(ctx: RunContext, store: Redis, router: Router, orders: list[str], lock: asyncio.Lock) -> None:
    """Every ``WATCH_EVERY_S``: mark each order's first breach on the lanes, and write which
    orders sit in two queues now into the ring's hash (under ``lock``: not while it changes)."""
    told: set[str] = set()
    while True:
        await asyncio.sleep(WATCH_EVERY_S)
        logs = await read_logs(store, ctx.run_id, orders)
        async with lock:
            await router.publish_split(store, {o: {a.seq for a in log} for o, log in logs.items()})
        for order, applied in logs.items():
            b = next((a for a in applied if a.breach), None)
            if order in told or b is None:
                continue
            told.add(order)
            seqs = " ".join(str(a.seq) for a in applied)
            ctx.record(
                CHECKER, "info", "violation", key=order,
                value=json.dumps(sorted({lane(a.worker) for a in applied})),
                note=f"{order}: seq {b.seq} applied {b.breach.replace('-', ' ')} ({seqs})",
            )  # fmt: skip


async def read_back(
    ctx: RunContext, store: Redis, router: Router, orders: list[str], emitted: dict[str, int]
) -> None:
    """Every order's applications as the store holds them, into the judged history; what
    the producers emitted; and each order's sequence as the run's table."""
    logs = await read_logs(store, ctx.run_id, orders)
    rows = [TABLE_HEADER]
    for order in orders:
        applied = logs[order]
        rows.append(table_row(order, applied, router.owner))
        for a in applied:
            ctx.record(
                RUNNER, "ok", "applied", key=order, value=str(a.seq),
                note=f"{order} seq {a.seq} by {a.worker}",
                data={"seq": a.seq, "worker": a.worker, "at_ms": a.t_ms},
            )  # fmt: skip
    ctx.record(
        RUNNER, "ok", "emitted", key=router.key, note=f"{sum(emitted.values())} event(s) emitted",
        data={"orders": emitted},
    )  # fmt: skip
    await ctx.set_table(rows)


def table_row(order: str, applied: tuple[Applied, ...], owner: Callable[[str], str]) -> list[str]:
    b = next((a for a in applied if a.breach), None)
    return [
        order,
        " ".join(f"{a.seq}:{a.worker}" for a in applied) or "nothing applied",
        owner(order) or "any",
        f"✘ {b.breach} (seq {b.seq})" if b else "",
    ]
