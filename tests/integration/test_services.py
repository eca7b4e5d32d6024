"""A run's service processes: one whose port another process took between the moment it
was chosen and the moment the service bound it starts on another port, once more."""

from __future__ import annotations

import socket
import time

import pytest

from app.cluster import ClusterInfo
from collectors.layouts import coordscope
from collectors.targets import RedisTarget
from scenarios.kit import services
from scenarios.kit.clients import redis_client
from scenarios.kit.history import RunRecord
from scenarios.kit.services import ServiceSet


async def test_a_service_whose_port_was_taken_starts_on_another(
    cluster: ClusterInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = RedisTarget(id="control", host="127.0.0.1", port=cluster.masters[-1].port)
    control = redis_client(target)
    run_id = f"ports-{time.strftime('%H%M%S')}"
    record = RunRecord(control, run_id)
    await record.create("test", {}, [], "tests/integration/test_services.py")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        chosen = iter([taken])
        real = services.free_port
        monkeypatch.setattr(services, "free_port", lambda: next(chosen, 0) or real())
        ss = ServiceSet(run_id, target.url, time.monotonic(), control=control)
        args = ["--participants", "[]", "--redis", target.url, "--try-timeout-ms", "500", "--fence", "on"]
        try:
            service = await ss.start(
                "tcc-coordinator", "tcc-coordinator", "scenarios.transactions.tcc_coordinator", args
            )
            assert service.port != taken and service.running
            log = (ss.folder / "tcc-coordinator.log").read_text()
            assert f"('127.0.0.1', {taken}): address already in use" in log
        finally:
            await ss.stop_all()
            await control.delete(coordscope.run_key(run_id), coordscope.history_key(run_id))
            await control.aclose()
