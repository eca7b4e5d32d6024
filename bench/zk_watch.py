"""ZooKeeper watch benchmark: how many of N rapid changes reach an observer.

Under a fresh root ``/coordscope/bench-zk-watch-<id>`` of the given ensemble, one
writer makes, as fast as kazoo pipelines them:

1. ``changes`` sets of one znode (``data``);
2. ``changes / 2`` child creations then as many deletions under one parent
   (``child``: ``changes`` changes of its children).

Watching at the same time, each with its own session:

- ``collector``: coordscope's ZooKeeper collector as it runs, with its persistent
  recursive watch (``addWatch``, ZooKeeper 3.6+); received = its ``events``;
- ``one_shot``: the same collector forced to one-shot watches
  (``persistent_watches=False``); it counts notifications, and a deleted child it
  had read notifies twice (its own data watch and its parent's children watch),
  so its child figure flatters it;
- ``kazoo``: a bare kazoo ``DataWatch`` (data) or ``ChildrenWatch`` (child);
  received = its callback calls after the first.

Each figure is a count and a ratio of ``changes``. Waiting for stragglers is
bounded: an observer that has not moved for 2 s (or 60 s in all) is done. The
root is deleted at the end.

    .venv/bin/python -m bench.zk_watch [--hosts 127.0.0.1:2181] [--changes 2000]

Without ``--hosts`` it starts a local cluster in a temporary folder (as
``coordscope up`` does) and stops it by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from kazoo.client import KazooClient
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from app.cluster import ClusterInfo
from bench.lab import on_own_cluster
from collectors.state import State
from collectors.targets import ZkTarget
from collectors.zookeeper import ZkCollector

QUIET_S = 2.0
LIMIT_S = 60.0


def measure(hosts: str, changes: int = 2000) -> dict[str, float]:
    """Counts and ratios of ``changes`` received, per observer, for data and child changes.

    Keys: ``{data,child}_{collector,one_shot,kazoo}`` (counts), the same with ``_ratio``,
    ``changes``, and ``{data,child}_write_s`` (how long the writer took). Runs its own
    event loop: call it from synchronous code (or a thread), not from a running loop.
    """
    return asyncio.run(_measure(hosts, changes))


async def _measure(hosts: str, changes: int) -> dict[str, float]:
    root = f"/coordscope/bench-zk-watch-{uuid.uuid4().hex[:8]}"
    writer = _client(hosts)
    bare = _client(hosts)
    writer.ensure_path(f"{root}/children")
    writer.create(f"{root}/data", b"0")
    collectors = {
        "collector": _collector(hosts, root, changes, persistent=True),
        "one_shot": _collector(hosts, root, changes, persistent=False),
    }
    tasks = [asyncio.create_task(c.run()) for c, _ in collectors.values()]
    out: dict[str, float] = {"changes": float(changes)}
    try:
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c, _ in collectors.values())), 30)
        for kind in ("data", "child"):
            out.update(await _phase(kind, root, changes, writer, bare, collectors))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.delete(root, recursive=True)
        for c in (writer, bare):
            c.stop()
            c.close()
    return out


async def _phase(
    kind: str,
    root: str,
    changes: int,
    writer: KazooClient,
    bare: KazooClient,
    collectors: dict[str, tuple[ZkCollector, State]],
) -> dict[str, float]:
    """One burst of ``changes`` (``data``: sets; ``child``: creations, then deletions)."""
    calls: list[int] = []
    if kind == "data":
        DataWatch(bare, f"{root}/data", lambda data, stat, event=None: calls.append(1))
        work = [partial(writer.set_async, f"{root}/data", str(i).encode()) for i in range(changes)]
    else:
        ChildrenWatch(bare, f"{root}/children", lambda children: calls.append(1))
        half = changes // 2
        work = [partial(writer.create_async, f"{root}/children/c{i}") for i in range(half)]
        work += [partial(writer.delete_async, f"{root}/children/c{i}") for i in range(half)]
    await _until(lambda: bool(calls), lambda: len(calls))  # its first call is the first read
    before = {name: c.events for name, (c, _) in collectors.items()}
    bare_before = len(calls)
    started = time.monotonic()
    await asyncio.to_thread(_burst, work, kind == "child")
    out = {f"{kind}_write_s": round(time.monotonic() - started, 3)}
    counters: dict[str, Callable[[], int]] = {
        name: partial(_since, c, before[name]) for name, (c, _) in collectors.items()
    }
    counters["kazoo"] = lambda: len(calls) - bare_before
    for name, count in counters.items():
        await _until(partial(_reached, count, changes), count)
        out[f"{kind}_{name}"] = float(min(count(), changes))
        out[f"{kind}_{name}_ratio"] = round(min(count(), changes) / changes, 4)
    return out


def _client(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=10.0)
    client.start(timeout=15)
    return client


def _collector(hosts: str, root: str, changes: int, persistent: bool) -> tuple[ZkCollector, State]:
    target = ZkTarget(
        id="bench", hosts=hosts, roots=(root,), budget=changes + 100, persistent_watches=persistent
    )
    state = State()
    return ZkCollector(target, state, lambda: None), state


def _since(collector: ZkCollector, before: int) -> int:
    return collector.events - before


def _reached(count: Callable[[], int], target: int) -> bool:
    return count() >= target


def _burst(work: Sequence[Callable[[], Any]], in_halves: bool) -> None:
    """Send the requests at once (kazoo pipelines them); creations before deletions."""
    halves = [work[: len(work) // 2], work[len(work) // 2 :]] if in_halves else [work]
    for half in halves:
        for result in [call() for call in half]:
            result.get(60)


async def _until(done: Callable[[], bool], progress: Callable[[], int]) -> None:
    """Wait for ``done``, or until ``progress`` has not moved for QUIET_S (LIMIT_S in all)."""
    deadline = time.monotonic() + LIMIT_S
    last, since = progress(), time.monotonic()
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if progress() != last:
            last, since = progress(), time.monotonic()
        elif time.monotonic() - since > QUIET_S:
            return


def report(figures: dict[str, float]) -> None:
    n = int(figures["changes"])
    print(f"{n} rapid changes each; received by:")
    print(f"{'':8} {'collector (addWatch)':>22} {'collector (one-shot)':>22} {'bare kazoo watch':>22}")
    for kind, title in (("data", "sets"), ("child", "children")):
        cells = [
            f"{int(figures[f'{kind}_{name}']):>6} ({figures[f'{kind}_{name}_ratio']:>7.2%})"
            for name in ("collector", "one_shot", "kazoo")
        ]
        print(
            f"{title:8} "
            + " ".join(f"{c:>22}" for c in cells)
            + f"   (written in {figures[f'{kind}_write_s']}s)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", help="a ZooKeeper connect string (default: start a local cluster)")
    parser.add_argument("--changes", type=int, default=2000, help="rapid changes of each kind (2000)")
    parser.add_argument("--zk-ensemble", type=int, default=None, help="the local cluster's servers (1)")
    args = parser.parse_args()
    if args.hosts:
        report(measure(args.hosts, args.changes))
        return 0

    async def on(info: ClusterInfo, args: argparse.Namespace) -> dict[str, float]:
        (target,) = info.zk_targets()
        return await _measure(target.hosts, args.changes)

    return on_own_cluster(on, lambda figures, _: report(figures), args, zk_ensemble=args.zk_ensemble)


if __name__ == "__main__":
    sys.exit(main())
