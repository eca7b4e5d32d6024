"""``/api/replay``: the replay's transport, shared by every viewer of this server.

``GET`` says whether this server replays a recording (``{"mode": "live"}``
when it does not) and where the playhead is: ``state`` (playing | paused |
ended), ``speed``, ``position_ms`` (the recorded wall-clock moment shown),
``start_ms``/``end_ms``, ``elapsed_ms``/``duration_ms``, ``keyframes``.

``POST`` moves it: ``{"action": "play" | "pause" | "seek", "at_ms": ..., "speed": ...}``
(``speed`` alone changes only the speed; ``seek`` needs ``at_ms``, clamped to
the recording). The answer is the new ``GET`` body. Every viewer of the
server sees the same moment: after a seek each is sent a fresh snapshot.
"""

from __future__ import annotations

from typing import TypeGuard

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.replay import SPEEDS
from app.web.api import _body, _core, error

ACTIONS = ("play", "pause", "seek")


async def get_replay(request: Request) -> JSONResponse:
    replay = _core(request).replay
    return JSONResponse({"mode": "live"} if replay is None else replay.status())


async def post_replay(request: Request) -> JSONResponse:
    data = await _body(request)
    if isinstance(data, JSONResponse):
        return data
    replay = _core(request).replay
    if replay is None:
        return error(409, "this server is live, not replaying a recording (coordscope replay FILE --web)")
    unknown = set(data) - {"action", "at_ms", "speed"}
    if unknown:
        return error(400, f"unknown field(s) {', '.join(sorted(unknown))} (known: action, at_ms, speed)")
    action = data.get("action")
    if action is not None and action not in ACTIONS:
        return error(400, f"unknown action {str(action)[:40]!r} (known: {', '.join(ACTIONS)})")
    speed = data.get("speed")
    if speed is not None and (not _number(speed) or not SPEEDS[0] <= speed <= SPEEDS[-1]):
        return error(400, f"'speed' must be a number from {SPEEDS[0]} to {SPEEDS[-1]:g}")
    at_ms = data.get("at_ms")
    if action == "seek" and not _number(at_ms):
        return error(400, "'seek' needs 'at_ms': the recorded moment to show (ms since the epoch)")
    if action is None and speed is None:
        return error(400, "send an 'action' (play, pause, seek) or a 'speed'")
    if speed is not None:
        replay.set_speed(float(speed))
    if action == "seek" and _number(at_ms):
        replay.seek(int(at_ms))
    elif action == "play":
        replay.play()
    elif action == "pause":
        replay.pause()
    return JSONResponse(replay.status())


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
