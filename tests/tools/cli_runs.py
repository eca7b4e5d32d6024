"""A scenario run from the CLI as a user runs it, judged by its exit status and what its
verdict says, and what it left behind (it must leave nothing)."""

from __future__ import annotations

import psycopg
import redis

from app.cluster import ClusterInfo
from collectors.layouts import coordscope
from tests.conftest import cli


def leftovers(info: ClusterInfo, run_id: str, *patterns: str) -> list[str]:
    """The run's keys matching ``patterns`` (and its services' registrations) on every
    master, and its schemas on every PostgreSQL."""
    found: list[str] = []
    for m in info.masters:
        r = redis.Redis(port=m.port)
        for pattern in (*patterns, coordscope.service_key(run_id, "*")):
            found += [f"{m.name}: {k.decode()}" for k in r.scan_iter(pattern)]
        r.close()
    for target in info.pg_targets():
        with psycopg.connect(target.dsn, autocommit=True) as conn:
            found += [
                f"{target.id}: schema {s}"
                for (s,) in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                    ("coordscope_" + run_id.replace("-", "_") + "%",),
                )
            ]
    return found


def judged(
    info: ClusterInfo, scenario: str, params: list[str], faults: list[str], status: int, says: str
) -> str:
    """``coordscope run SCENARIO --set P --fault F``: it exits ``status`` and its verdict says
    ``says`` (a violation's first finding is the verdict's own line). The run's id."""
    flags = [x for p in params for x in ("--set", p)] + [x for f in faults for x in ("--fault", f)]
    out = cli(info, "run", scenario, *flags)
    assert out.returncode == status, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.startswith(("HELD", "VIOLATED")))
    assert says in "\n".join(lines[verdict:]), out.stdout
    if status:
        assert says in lines[verdict + 1], out.stdout
    run_id = lines[0].split()[1].rstrip(":")
    assert run_id.startswith(scenario + "-"), out.stdout
    return run_id
