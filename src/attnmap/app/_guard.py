"""ASGI middleware in front of every route: the Host check, the body limit and read timeout,
the methods of each path, and the security headers of every answer.

A local server is still reachable by every process on the machine, and by every web page's
JavaScript through DNS rebinding: so the Host header must name an address the server was bound
to (loopback by default), request bodies are bounded (413) and must arrive within a time limit
(408) before any route reads them, and every answer forbids scripts from anywhere but this
server. A client that hangs up mid-body is simply let go: nothing is answered, nothing logged.
"""

from __future__ import annotations

import asyncio
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


class _Slow(Exception):
    """The request body did not arrive in time."""


class _Gone(Exception):
    """The client hung up before its body was complete."""


class Guard:
    """Host header check (DNS rebinding), a bound on request bodies and on the time they may
    take to arrive (a client that promises a large body and sends a byte would otherwise hold
    its connection, and the server's shutdown, forever)."""

    def __init__(self, app: Any, *, hosts: set[str] | None, max_body: int,
                 body_timeout: float = 30.0) -> None:
        self.app = app
        self.hosts = hosts  # None: any Host (the server listens on every interface)
        self.max_body = max_body
        self.body_timeout = body_timeout

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
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        if length is not None and (
            not length.isdigit() or len(length) > 18 or int(length) > self.max_body
        ):
            try:
                await _drain(receive, 64 * self.max_body, deadline)
            except _Gone:
                return
            except _Slow:
                pass  # the answer is the same: too big
            await _send_json(send, 413, too_big)
            return
        body: list[bytes] = []
        size, more = 0, True
        try:
            while more:
                msg = await _receive_by(receive, deadline)
                chunk = msg.get("body", b"")
                size += len(chunk)
                more = msg.get("more_body", False)
                if size > self.max_body:
                    if more:
                        await _drain(receive, 64 * self.max_body, deadline)
                    await _send_json(send, 413, too_big)
                    return
                body.append(chunk)
        except _Gone:
            return  # nobody is left to answer
        except _Slow:
            promised = f" of the {int(length):,} promised" if length is not None else ""
            await _send_json(send, 408, f"the request body did not arrive within "
                             f"{self.body_timeout:g} s ({size:,} bytes{promised}); send the "
                             "whole body at once")
            return
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


async def _receive_by(receive: Any, deadline: float) -> Any:
    """The next body message, or `_Slow` once `deadline` (loop time) has passed, or `_Gone`
    when the client hung up."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise _Slow
    try:
        msg = await asyncio.wait_for(receive(), left)
    except asyncio.TimeoutError:
        raise _Slow from None
    if msg["type"] == "http.disconnect":
        raise _Gone
    return msg


async def _drain(receive: Any, limit: int, deadline: float) -> None:
    """Read and drop a refused body, so the client reads our answer instead of a reset."""
    seen = 0
    while seen <= limit:
        msg = await _receive_by(receive, deadline)
        if not msg.get("more_body", False):
            return
        seen += len(msg.get("body", b""))


class Methods:
    """What each path answers to: ``OPTIONS`` lists the methods of every route on the path
    (Starlette names only the first route's), ``HEAD`` is served wherever ``GET`` is, and a
    method no route takes is 405 with the full ``Allow`` list."""

    ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def __init__(self, app: Any, *, routes: Any) -> None:
        self.app = app
        self.routes = routes  # a callable: the application's routes now

    def allowed(self, scope: Any) -> list[str]:
        from starlette.routing import Match

        out = []
        for method in self.ORDER:
            probe = {**scope, "method": "GET" if method == "HEAD" else method}
            if any(r.matches(probe)[0] == Match.FULL for r in self.routes()):
                out.append(method)
        return out

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(scope)
        method = scope["method"]
        if not allowed or method in allowed and method != "HEAD":
            await self.app(scope, receive, send)  # no such path (404), or a route takes it
            return
        allow = ", ".join([*allowed, "OPTIONS"])
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204,
                        "headers": [(b"allow", allow.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        if method == "HEAD":
            async def headers_only(message: Any) -> None:
                if message["type"] == "http.response.body":
                    if message.get("more_body", False):
                        return
                    message = {**message, "body": b""}
                await send(message)

            await self.app({**scope, "method": "GET"}, receive, headers_only)
            return
        resp = JSONResponse({"detail": f"{method} is not allowed on {quote(scope['path'])}; "
                             f"use {allow}"}, status_code=405, headers={"allow": allow})
        await resp(scope, receive, send)


async def _send_json(send: Any, status: int, detail: str) -> None:
    resp = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
    await resp({"type": "http"}, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
