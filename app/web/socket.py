"""``WS /ws``: a snapshot first, then every event as one JSON object per message.

Messages from the browser are optional: ``{"type": "ping"}`` gets a pong,
``{"type": "resync"}`` a fresh snapshot. Anything else gets an ``error``
message naming what was wrong, and the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.bus import Bus, Viewer
from app.core import Core
from app.web.guard import Guard
from collectors.events import Snapshot, to_json

MAX_MESSAGE = 4096


async def websocket_endpoint(websocket: WebSocket) -> None:
    core: Core = websocket.app.state.core
    guard: Guard = websocket.app.state.guard
    if not guard.origin_ok(websocket.headers):
        await websocket.close(code=1008, reason="cross-origin websocket refused")
        return
    await websocket.accept()
    viewer = core.bus.subscribe()
    sender = asyncio.create_task(_send(websocket, viewer, core.bus))
    try:
        await _receive(websocket, viewer)
    except WebSocketDisconnect:
        pass
    finally:
        viewer.close()
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


async def _send(websocket: WebSocket, viewer: Viewer, bus: Bus) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            delivery = await viewer.get()
            if isinstance(delivery, Snapshot):
                await websocket.send_text(json.dumps(to_json(delivery)))
            else:
                for event in delivery:
                    await websocket.send_text(bus.encoded(event))


async def _receive(websocket: WebSocket, viewer: Viewer) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            reply: dict[str, str] | None = {"type": "error", "message": "binary messages are not understood"}
        else:
            reply = _answer(text, viewer)
        if reply is not None:
            await websocket.send_text(json.dumps(reply))


def _answer(text: str, viewer: Viewer) -> dict[str, str] | None:
    if len(text) > MAX_MESSAGE:
        return {"type": "error", "message": f"message too long ({len(text)} > {MAX_MESSAGE})"}
    try:
        message = json.loads(text)
    except ValueError:
        return {"type": "error", "message": 'not JSON: send an object such as {"type": "ping"}'}
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return {"type": "error", "message": "a message is a JSON object with a string 'type'"}
    if message["type"] == "ping":
        return {"type": "pong"}
    if message["type"] == "resync":
        viewer.resync()
        return None
    return {
        "type": "error",
        "message": f"unknown message type {message['type'][:40]!r} (known: ping, resync)",
    }
