"""The Jupyter widget (anywidget): the same viewer.js file, the payload as a binary trait.

Imported only by :func:`attnmap.show` (or directly), so that anywidget and traitlets load
only when a notebook asks for the viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import AttnmapError
from .colours import DEFAULT_CMAP
from .html import check_options
from .payload import encode

try:
    import anywidget
    import traitlets
except ImportError:
    raise AttnmapError(
        "the notebook viewer needs anywidget; install it with `pip install attnmap[widget]` "
        "(or write a standalone page with attnmap.to_html(run, 'run.html'))"
    ) from None

STATIC = Path(__file__).parent / "static"
ESM = STATIC / "viewer.js"
CSS = STATIC / "viewer.css"


class AttentionWidget(anywidget.AnyWidget):
    """Shows an AttentionRun in a notebook; the payload travels as binary (no base64)."""

    # A Path makes anywidget read the very file that the standalone page and the app use.
    _esm = ESM
    _css = CSS
    payload = traitlets.Bytes(b"").tag(sync=True)  # encode(run)
    options = traitlets.Dict().tag(sync=True)  # initial stack/layer/head/scale/view
    layer_url = traitlets.Unicode("").tag(sync=True)  # base URL for layers not in payload


def make_widget(run: Any, *, cmap: str = DEFAULT_CMAP, **options: Any) -> AttentionWidget:
    """An ``AttentionWidget`` for `run` with the initial view given by `options`."""
    opts = check_options(run, options)
    return AttentionWidget(payload=encode(run, cmap=cmap), options=opts)
