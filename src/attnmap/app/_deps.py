"""What routes get from the application they are mounted in (FastAPI dependencies)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from ._errors import ApiError
from ._jobs import Runner


def _runner(request: Request) -> Runner:
    return request.app.state.attnmap  # type: ignore[no-any-return]


def _alignments(request: Request) -> Any:
    return request.app.state.attnmap_alignments


RunnerDep = Annotated[Runner, Depends(_runner)]
AlignmentsDep = Annotated[Any, Depends(_alignments)]


class OctetStream(Response):
    """Binary viewer payloads and layer chunks; cached by the browser for an hour (a stored
    run never changes under its id)."""

    media_type = "application/octet-stream"

    def __init__(self, content: bytes, status_code: int = 200) -> None:
        super().__init__(content, status_code,
                         headers={"cache-control": "private, max-age=3600"})


def payload_module() -> Any:
    try:
        from ..viewer import payload
    except ImportError as exc:
        raise ApiError(503, f"the viewer's payload module is not available ({exc})") from None
    return payload
