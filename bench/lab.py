"""What the benchmarks that start a cluster of their own share: the cluster in a temporary
folder (the services' logs go with it), stopped by PID whatever happens, one line on
standard error when the measurement failed, and the report only when it did not. A SIGTERM
(``timeout``, a CI job cancelled) is taken as a Ctrl-C, so the cluster is stopped then too."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from app.cluster import ClusterInfo, LocalCluster

R = TypeVar("R")


def interrupted(signum: int, frame: object) -> None:
    """A SIGTERM as a Ctrl-C: asyncio cancels the run (its ``finally`` blocks stop the
    services), then the cluster is stopped."""
    os.kill(os.getpid(), signal.SIGINT)


def on_own_cluster(
    measure: Callable[[ClusterInfo, argparse.Namespace], Coroutine[Any, Any, R]],
    report: Callable[[R, argparse.Namespace], None],
    args: argparse.Namespace,
    fails: tuple[type[Exception], ...] = (),
    cluster: type[LocalCluster] = LocalCluster,
    **up: Any,
) -> int:
    """Start ``cluster`` (``up``: what its ``up`` is asked, e.g. ``masters=2``), run
    ``measure`` on it, stop it, then ``report`` what it measured. Returns the exit status:
    0, 1 when ``measure`` raised one of ``fails`` (said in one line), 130 when interrupted."""
    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="coordscope-bench-") as folder:
        os.environ["COORDSCOPE_RUNS"] = str(Path(folder) / "runs")
        local = cluster(Path(folder) / "cluster")
        try:
            info, _ = local.up(**up)
            result = asyncio.run(measure(info, args))
        except fails as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopping the cluster", file=sys.stderr)
            return 130
        finally:
            local.down()
    report(result, args)
    return 0
