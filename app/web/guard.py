"""Who may change things through the web server.

Bound to loopback (the default) the server trusts local callers. Bound
anywhere else, every call that changes something (``POST``) needs the
server's token (``Authorization: Bearer <token>`` or ``X-Coordscope-Token``),
which ``coordscope web`` prints at start. Whatever the binding:

- a ``POST`` must send JSON (``Content-Type: application/json``), which a
  foreign web page cannot do without a CORS preflight we never answer;
- a request or websocket whose ``Origin`` is another site is refused, so a
  page on the internet cannot drive a coordscope running on your laptop.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    token: str | None
    """None when bound to loopback: no token needed."""

    def origin_ok(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET
        host = headers.get("host", "")
        return urlsplit(origin).netloc == host

    def may_change(self, headers: Headers) -> str | None:
        """None when allowed, else the reason (for a 401/403 body)."""
        if not self.origin_ok(headers):
            return "cross-origin requests are refused"
        if self.token is None:
            return None
        given = headers.get("x-coordscope-token") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return "this server is not on loopback: send its token (Authorization: Bearer ...)"
        return None
