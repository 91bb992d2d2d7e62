"""ASGI middleware in front of every route: the Host check, the body limit, and the security
headers of every answer.

A local server is still reachable by every process on the machine, and by every web page's
JavaScript through DNS rebinding: so the Host header must name an address the server was bound
to (loopback by default), request bodies are bounded (413) before any route reads them, and
every answer forbids scripts from anywhere but this server.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ._errors import quote

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_HOST = ("0.0.0.0", "::", "")
# Scripts only from this server, so a token that is markup can never run even if some view
# put it into HTML; styles may be set inline by the viewer.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": CSP.encode(),
}


def allowed_hosts(host: str) -> set[str] | None:
    """The Host names served for a server bound to `host` (None: any, it listens everywhere)."""
    return None if host in ANY_HOST else {*LOOPBACK, host.strip("[]").lower()}


class Guard:
    """Host header check (DNS rebinding) and a bound on request bodies."""

    def __init__(self, app: Any, *, hosts: set[str] | None, max_body: int) -> None:
        self.app = app
        self.hosts = hosts  # None: any Host (the server listens on every interface)
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if self.hosts is not None and name not in self.hosts:
            await _send_json(send, 400, f"Host {quote(host)} is not served here; open the "
                             "app at the address `attnmap serve` printed")
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        too_big = f"request body is larger than this server's limit of {self.max_body:,} bytes"
        if length is not None and (
            not length.isdigit() or len(length) > 18 or int(length) > self.max_body
        ):
            await _drain(receive, 64 * self.max_body)
            await _send_json(send, 413, too_big)
            return
        body, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            more = msg.get("more_body", False)
            if size > self.max_body:
                if more:
                    await _drain(receive, 64 * self.max_body)
                await _send_json(send, 413, too_big)
                return
            body.append(chunk)
        data = b"".join(body)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    """Adds the CSP, nosniff and no-referrer headers to every answer that lacks them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS.items() if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _drain(receive: Any, limit: int) -> None:
    """Read and drop a refused body, so the client reads our answer instead of a reset."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return
        seen += len(msg.get("body", b""))


async def _send_json(send: Any, status: int, detail: str) -> None:
    resp = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
    await resp({"type": "http"}, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
