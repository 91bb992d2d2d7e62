"""How the app answers errors: always JSON ``{"detail": message}`` with a 4xx/5xx status."""

from __future__ import annotations

import sys
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered as JSON ``{"detail": detail}`` with a 4xx/5xx status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def quote(value: str, limit: int = 60) -> str:
    """A user's value quoted in a message, cut so that a huge value is not echoed back."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and "json" not in ctype:
        parts.insert(0, "send a JSON object with Content-Type: application/json")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); see the server's output"}, 500
    )


def install(app: FastAPI) -> None:
    """Answer `ApiError`, invalid requests (422) and crashes (500) as ``{"detail": …}``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _crash)
