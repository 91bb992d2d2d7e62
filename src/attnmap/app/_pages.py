"""The page and its static files (not part of the API, so not in /openapi.json)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from ._errors import ApiError, quote

STATIC = Path(__file__).parent / "static"
VIEWER_STATIC = Path(__file__).parent.parent / "viewer" / "static"
APP_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
             "favicon.svg": "image/svg+xml"}
VIEWER_FILES = {"viewer.js": APP_FILES["app.js"], "viewer.css": APP_FILES["app.css"]}

router = APIRouter(include_in_schema=False)


def _file(path: Path, media_type: str) -> Response:
    if not path.is_file():
        return JSONResponse({"detail": f"{path.name} is not installed with attnmap"}, 404)
    return FileResponse(path, media_type=media_type, headers={"cache-control": "no-cache"})


@router.get("/")
async def index() -> Response:
    return _file(STATIC / "index.html", "text/html; charset=utf-8")


@router.get("/favicon.ico")
async def favicon() -> Response:
    # Browsers ask for it whatever the page says; a 404 here is an error in every console.
    return _file(STATIC / "favicon.svg", APP_FILES["favicon.svg"])


@router.get("/app/{name}")
async def app_file(name: str) -> Response:
    if name not in APP_FILES:
        raise ApiError(404, f"no file {quote(name)} under /app/")
    return _file(STATIC / name, APP_FILES[name])


@router.get("/static/{name}")
async def viewer_file(name: str) -> Response:
    if name not in VIEWER_FILES:
        raise ApiError(404, f"no file {quote(name)} under /static/")
    return _file(VIEWER_STATIC / name, VIEWER_FILES[name])
