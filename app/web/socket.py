"""``WS /ws``: a snapshot first, then every event as one JSON object per message.

``/ws?batch=1`` (what the page uses) sends each flush's events as one message
instead, ``{"type": "batch", "v": 1, "events": [...]}``: the same events, a
fraction of the frames, and the same bytes for every viewer.

The snapshot carries one page of each kind (:data:`app.bus.WIRE_PAGE`) and
``totals``; ``GET /api/state?kind=...&offset=...`` pages through the rest.

Messages from the browser are optional: ``{"type": "ping"}`` gets a pong,
``{"type": "resync"}`` a fresh snapshot. Anything else gets an ``error``
message naming what was wrong, and the connection stays open.

A viewer that stops reading (its socket buffers full, a send blocked for
:data:`SEND_TIMEOUT_S`) is disconnected and the event log says so; until then
it costs the others nothing (its queue is bounded, then replaced by a
snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.bus import Bus, Viewer
from app.core import Core
from app.web.guard import Guard
from collectors.events import Snapshot

MAX_MESSAGE = 4096
BINARY = "binary messages are not understood"
SEND_TIMEOUT_S = 10.0
"""A viewer whose socket takes no data for this long is dropped."""


class ViewerStalled(Exception):
    """A send did not complete within :data:`SEND_TIMEOUT_S`."""


async def websocket_endpoint(websocket: WebSocket) -> None:
    core: Core = websocket.app.state.core
    guard: Guard = websocket.app.state.guard
    if not guard.origin_ok(websocket.headers):
        await websocket.close(code=1008, reason="cross-origin websocket refused")
        return
    await websocket.accept()
    batched = websocket.query_params.get("batch") in ("1", "true")
    viewer = core.bus.subscribe()
    sender = asyncio.create_task(_send(websocket, viewer, core.bus, batched))
    receiver = asyncio.create_task(_receive(websocket, viewer))
    try:
        done, _ = await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        if sender in done and isinstance(sender.exception(), ViewerStalled):
            client = websocket.client
            who = f"{client.host}:{client.port}" if client else "a viewer"
            core.bus.state.log("warn", "web", f"{who} read nothing for {SEND_TIMEOUT_S:g}s: disconnected")
            core.bus.wake()
    finally:
        viewer.close()
        for task in (sender, receiver):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _send(websocket: WebSocket, viewer: Viewer, bus: Bus, batched: bool) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            delivery = await viewer.get()
            if isinstance(delivery, Snapshot):
                texts = [bus.wire_snapshot(delivery)]
            elif batched:
                texts = [bus.batch_text(delivery)]
            else:
                texts = [bus.encoded(event) for event in delivery]
            for text in texts:
                try:
                    await asyncio.wait_for(websocket.send_text(text), SEND_TIMEOUT_S)
                except TimeoutError:
                    raise ViewerStalled from None


async def _receive(websocket: WebSocket, viewer: Viewer) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                reply: dict[str, str] | None = {"type": "error", "message": BINARY}
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
