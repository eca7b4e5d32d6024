"""How a run talks to its services: HTTP/1.1 on loopback, with explicit timeouts.

A reply that does not come within its timeout is an *unknown* outcome (the
request may or may not have been served), which is exactly what the
scenarios' actors must cope with; :class:`Reply` keeps the three outcomes
apart: an answer (any status), no answer in time, or no connection at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from scenarios.kit.services import Service


@dataclass(frozen=True)
class Reply:
    status: int | None
    """The HTTP status; None when no answer came."""
    body: dict[str, Any]
    error: str = ""
    """Why no answer came: ``refused`` (it was not served), ``timeout`` or ``lost`` (the
    connection broke mid-request): for those two it may have been served."""

    @property
    def unknown(self) -> bool:
        """No answer, and the request may have been served."""
        return self.status is None and self.error != "refused"

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Http:
    """A client of its own: its connections and its cookie jar (a user's browser keeps the
    cookies its replies set: a session's, a balancer's stickiness)."""

    def __init__(self, connections: int = 64, cookies: dict[str, str] | None = None) -> None:
        self._client = httpx.AsyncClient(
            trust_env=False,  # loopback only: never through a proxy from the environment
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            cookies=cookies,
        )

    async def post(self, service: Service | str, path: str, body: dict[str, Any], timeout_s: float) -> Reply:
        return await self._send("POST", service, path, body, timeout_s)

    async def get(self, service: Service | str, path: str, timeout_s: float) -> Reply:
        return await self._send("GET", service, path, None, timeout_s)

    def cookie(self, name: str) -> str | None:
        """A cookie a reply set (and the next request sends)."""
        value = self._client.cookies.get(name)
        return str(value) if value is not None else None

    async def _send(
        self, method: str, service: Service | str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> Reply:
        address = service.address if isinstance(service, Service) else service
        try:
            resp = await self._client.request(method, f"http://{address}{path}", json=body, timeout=timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return Reply(None, {}, "refused")
        except httpx.TimeoutException:
            return Reply(None, {}, "timeout")
        except httpx.TransportError as exc:
            return Reply(None, {}, f"lost ({type(exc).__name__})")
        try:
            data = resp.json()
        except ValueError:
            data = {"text": resp.text[:200]}
        return Reply(resp.status_code, data if isinstance(data, dict) else {"value": data})

    async def aclose(self) -> None:
        await self._client.aclose()
