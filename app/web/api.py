"""The JSON API. Every answer comes from the state the collectors built, never
from a private store of the server's; every mistake gets a 4xx whose
``error`` names what was wrong."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.bus import WIRE_PAGE
from app.core import Core
from app.replay import READ_ONLY
from app.web.guard import Guard
from collectors.events import Page, row_json, state_json
from collectors.families import FAMILIES, REGISTRY
from collectors.families.runs import Run
from scenarios.kit.catalogue import ScenarioError
from scenarios.registry import SCENARIOS

MAX_BODY = 64 * 1024


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    guard: Guard = request.app.state.guard
    refused = guard.may_change(request.headers)
    if refused is not None:
        return error(403 if "origin" in refused else 401, refused)
    if "application/json" not in request.headers.get("content-type", ""):
        return error(415, "send the body as JSON (Content-Type: application/json)")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return error(413, f"body too large ({len(raw)} bytes > {MAX_BODY})")
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        return error(400, f"the body is not valid JSON ({exc})")
    if not isinstance(data, dict):
        return error(400, "the body must be a JSON object")
    return data


MAX_PAGE = 5000


async def get_state(request: Request) -> Response:
    """One snapshot: a page of each kind (``?kind=lock&offset=300&limit=300`` for more),
    with ``totals``. The default page is the websocket's, encoded once per state."""
    query = request.query_params
    bus = _core(request).bus
    if not query:
        return Response(bus.wire_snapshot_state(), media_type="application/json")
    kind = query.get("kind") or None
    if kind is not None and kind not in FAMILIES:
        return error(400, f"unknown kind {kind[:40]!r} (known: {', '.join(FAMILIES)})")
    try:
        offset = int(query.get("offset", 0))
        limit = int(query.get("limit", WIRE_PAGE.limit or MAX_PAGE))
    except ValueError:
        return error(400, "offset and limit are whole numbers")
    if offset < 0 or not 0 < limit <= MAX_PAGE:
        return error(400, f"offset must be >= 0 and limit from 1 to {MAX_PAGE}")
    page = Page(limit=limit, offset=offset, kind=kind)
    snapshot = bus.snapshot()
    body = state_json(snapshot, page)
    if kind is not None:  # a page of one family comes with its rows, as the websocket's do
        body["rows"] = {kind: {e.id: row_json(e) for e in page.cut(snapshot.of(kind))}}
    return JSONResponse(body)


async def get_families(request: Request) -> JSONResponse:
    """Each family's panel: its title, where it goes, its columns (the rows come with the
    entities, in the websocket's events)."""
    return JSONResponse([family.describe() for family in REGISTRY])


async def get_detail(request: Request) -> JSONResponse:
    """One entity in full, as its family describes it: lines of cells."""
    kind = request.query_params.get("kind", "")
    entity_id = request.query_params.get("id", "")
    if kind not in FAMILIES:
        return error(400, f"unknown kind {kind[:40]!r} (known: {', '.join(FAMILIES)})")
    entity = _core(request).bus.state.get(kind, entity_id)
    if entity is None:
        return error(404, f"no {kind} {entity_id[:200]!r} (it may have gone)")
    lines = FAMILIES[kind].detail(entity)
    return JSONResponse(
        {"kind": kind, "id": entity_id, "lines": [[c.to_json() for c in line] for line in lines]}
    )


async def get_scenarios(request: Request) -> JSONResponse:
    return JSONResponse([spec.to_json() for spec in _core(request).catalogue()])


def _run_json(run: Run) -> dict[str, Any]:
    return dataclasses.asdict(run)


async def list_runs(request: Request) -> JSONResponse:
    runs = sorted(_core(request).bus.state.entities("run"), key=lambda r: r.id)
    return JSONResponse([_run_json(r) for r in runs if isinstance(r, Run)])


async def start_run(request: Request) -> JSONResponse:
    data = await _body(request)
    if isinstance(data, JSONResponse):
        return data
    if _core(request).replay is not None:
        return error(409, READ_ONLY)
    scenario = data.get("scenario")
    if not isinstance(scenario, str) or not scenario:
        return error(400, "missing 'scenario': the name of a scenario (see GET /api/scenarios)")
    if scenario not in SCENARIOS:
        return error(404, f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
    params = data.get("params", {})
    faults = data.get("faults", [])
    if not isinstance(params, dict):
        return error(400, "'params' must be an object of NAME: VALUE")
    if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
        return error(400, "'faults' must be a list of fault names")
    unknown = set(data) - {"scenario", "params", "faults"}
    if unknown:
        return error(400, f"unknown field(s) {', '.join(sorted(unknown))} (known: scenario, params, faults)")
    try:
        run = await _core(request).start_run(scenario, {str(k): str(v) for k, v in params.items()}, faults)
    except ScenarioError as exc:
        status = 409 if "read-only" in str(exc) else 503 if "unreachable" in str(exc) else 400
        return error(status, str(exc))
    return JSONResponse(
        {"id": run.id, "scenario": scenario, "status": "running", "url": f"/api/runs/{run.id}"},
        status_code=201,
    )


async def get_run(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    run = _core(request).run_entity(run_id)
    if run is None:
        return error(404, f"no run {run_id!r} (runs are kept for a day)")
    return JSONResponse(_run_json(run))


async def inject_fault(request: Request) -> JSONResponse:
    data = await _body(request)
    if isinstance(data, JSONResponse):
        return data
    if _core(request).replay is not None:
        return error(409, READ_ONLY)
    core = _core(request)
    run_id = request.path_params["run_id"]
    run = core.run_entity(run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    fault = data.get("fault")
    if not isinstance(fault, str) or not fault:
        return error(400, "missing 'fault': the name of one of the scenario's faults")
    if run.status != "running":
        return error(409, f"run {run_id} is {run.status}: faults only go to a running run")
    try:
        await core.request_fault(run_id, run.scenario, fault)
    except ScenarioError as exc:
        return error(503 if "unreachable" in str(exc) else 400, str(exc))
    return JSONResponse({"run": run_id, "fault": fault, "status": "requested"}, status_code=202)


async def stop_run(request: Request) -> JSONResponse:
    data = await _body(request)
    if isinstance(data, JSONResponse):
        return data
    if _core(request).replay is not None:
        return error(409, READ_ONLY)
    core = _core(request)
    run_id = request.path_params["run_id"]
    run = core.run_entity(run_id)
    if run is None:
        return error(404, f"no run {run_id!r}")
    if run.status != "running":
        return error(409, f"run {run_id} is {run.status} already")
    try:
        await core.request_stop(run_id)
    except ScenarioError as exc:
        return error(503, str(exc))
    return JSONResponse({"run": run_id, "status": "stop requested"}, status_code=202)
