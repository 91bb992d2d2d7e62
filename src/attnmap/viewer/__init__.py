"""The interactive viewer: one ES module (static/viewer.js) in three hosts.

``to_html`` writes a standalone page, ``show`` returns a Jupyter widget, and the web app
(``attnmap serve``) serves the same module. ``payload`` packs a run into the bytes they read.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: `attnmap html` imports viewer._cmd, which must not pull in numpy.
_LAZY = {
    "to_html": "html",
    "diff_html": "html",
    "PAYLOAD_VERSION": "payload",
    "decode": "payload",
    "decode_layer": "payload",
    "encode": "payload",
    "encode_layer": "payload",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value

__all__ = [
    "PAYLOAD_VERSION",
    "decode",
    "decode_layer",
    "diff_html",
    "encode",
    "encode_layer",
    "mimebundle",
    "show",
    "to_html",
]


def show(
    run: Any,
    *,
    stack: str | None = None,
    layer: int | None = None,
    head: int | str | None = None,
    scale: str | None = None,
    view: str | None = None,
    ignore_first: bool | None = None,
    step: int | None = None,
    cmap: str = "Blues",
    representation: str = "auto",
    precision: str = "full",
) -> Any:
    """A notebook widget showing `run` (display it, or leave it last in a cell).

    The keywords set the first view, as in :func:`attnmap.to_html`: `stack`, `layer`, `head`
    (a number, ``"mean"`` or ``"max"``), `scale` (``"unit"``, ``"data"``, ``"log"``), `view`
    (``"heatmap"``, ``"heads"``, ``"layers"``, ``"generated"``), `ignore_first`, `step` (the
    step playback's first step, for generated runs); `cmap` names the matplotlib colormap.
    `representation`: ``"dense"`` sends every weight; ``"tiles"`` sends the tokens and facts
    and the kernel computes each tile the view needs (from queries and keys for a long run);
    ``"auto"`` (default) picks tiles where the standalone page would be long. `precision`:
    ``"full"`` (default) or ``"compact"`` (every weight within 1/510, a smaller payload).
    Needs anywidget (``pip install attnmap[widget]``).
    """
    from .widget import make_widget

    options = {"stack": stack, "layer": layer, "head": head, "scale": scale, "view": view,
               "ignore_first": ignore_first, "step": step}
    return make_widget(run, cmap=cmap, representation=representation, precision=precision,
                       **{k: v for k, v in options.items() if v is not None})


def mimebundle(run: Any, **kwargs: Any) -> dict[str, Any]:
    """What a notebook displays for `run`: the widget's mime data, with the run's own repr
    as its ``text/plain``.

    anywidget answers ``(data, metadata)``; the metadata it sends is empty, so the data
    alone is the bundle.
    """
    bundle = show(run)._repr_mimebundle_(**kwargs)
    data = dict(bundle[0] if isinstance(bundle, tuple) else bundle or {})
    data["text/plain"] = repr(run)
    return data
