"""The local web app (``attnmap serve``): a page with a text box, the viewer, and a JSON API.

This package imports only the standard library, so that ``attnmap --help`` stays fast; the
FastAPI application lives in :mod:`attnmap.app.server` (``create_app``) and needs the
``app`` extra: ``pip install 'attnmap[app]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Build the FastAPI application; see :func:`attnmap.app.server.create_app`."""
    from .server import create_app as _create_app

    return _create_app(*args, **kwargs)
