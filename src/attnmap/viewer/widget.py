"""The Jupyter widget (anywidget): the same viewer.js file, the payload as a binary trait.

Imported only by :func:`attnmap.show` (or directly), so that anywidget and traitlets load
only when a notebook asks for the viewer.

Long runs (those the standalone page would draw in its long representation) do not travel
whole: the widget sends the payload's header only, sets ``tiles``, and answers the viewer's
tile requests from the kernel, computing each tile from the run (queries and keys, or
weights) with :func:`attnmap.tiles.tile`. Wire format, anywidget custom messages:

- request  ``{"kind": "tile", "id", "stack", "layer", "head", "block", "q0", "k0", "rows",
  "cols", "reduce", "ignore_first"}`` (the app's tile endpoint's parameters)
- reply    ``{"kind": "tile", "id", "rows", "cols", "block"}`` plus one buffer, float32
  little-endian ``[rows, cols]`` (NaN = masked), or ``{"kind": "tile", "id", "error"}`` with
  a one-line message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import tiles
from .._errors import AttnmapError
from .colours import DEFAULT_CMAP
from .html import check_options
from .payload import check_precision, encode

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

REPRESENTATIONS = ("auto", "dense", "tiles")
# The most values one tile request may ask for: the app's limit (a 1024² tile is 4 MB).
MAX_CELLS = 1024 * 1024
_gpu_checked = False


class AttentionWidget(anywidget.AnyWidget):
    """Shows an AttentionRun in a notebook; the payload travels as binary (no base64)."""

    # A Path makes anywidget read the very file that the standalone page and the app use.
    _esm = ESM
    _css = CSS
    payload = traitlets.Bytes(b"").tag(sync=True)  # encode(run), or its header for tiles
    options = traitlets.Dict().tag(sync=True)  # initial stack/layer/head/scale/view
    layer_url = traitlets.Unicode("").tag(sync=True)  # base URL for layers not in payload
    tiles = traitlets.Bool(False).tag(sync=True)  # long runs: the kernel answers tile requests

    def serve_tiles(self, run: Any) -> None:
        """Answer the viewer's tile requests for `run` from now on."""
        self._tile_run = run
        if not getattr(self, "_tile_handler_on", False):
            self.on_msg(_on_message)
            self._tile_handler_on = True


def make_widget(run: Any, *, cmap: str = DEFAULT_CMAP, representation: str = "auto",
                precision: str = "full", **options: Any) -> AttentionWidget:
    """An ``AttentionWidget`` for `run` with the initial view given by `options`.

    `representation`: ``"dense"`` sends every weight with the widget; ``"tiles"`` sends the
    header only and computes the tiles a view needs in the kernel; ``"auto"`` (default) takes
    tiles for runs the standalone page would draw as long (``longpage.choose``).
    `precision` (dense): ``"full"`` or ``"compact"`` as in :func:`attnmap.to_html`.
    """
    opts = check_options(run, options)
    check_precision(precision)
    if representation not in REPRESENTATIONS:
        raise AttnmapError(f"representation must be 'auto', 'dense' or 'tiles' "
                           f"(not {representation!r})")
    if representation == "auto":
        from . import longpage

        representation = "tiles" if longpage.choose(run) == "long" else "dense"
    if representation == "dense":
        return AttentionWidget(payload=encode(run, cmap=cmap, precision=precision),
                               options=opts)
    w = AttentionWidget(payload=encode(run, layers="none", cmap=cmap), options=opts, tiles=True)
    w.serve_tiles(run)
    return w


# --- the kernel side of tile requests ---------------------------------------------------------
def _on_message(widget: AttentionWidget, content: Any, buffers: Any) -> None:
    """on_msg callback: answer a tile request; other messages are not ours."""
    if not isinstance(content, dict) or content.get("kind") != "tile":
        return
    reply, bufs = answer(getattr(widget, "_tile_run", None), content)
    widget.send(reply, buffers=bufs)


def answer(run: Any, content: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The reply to one tile request: (message, buffers). Never raises: a bad request or a
    failed computation is an error reply with a one-line message."""
    rid = content.get("id")
    reply: dict[str, Any] = {"kind": "tile", "id": rid if isinstance(rid, (int, str)) else None}
    try:
        if run is None:
            raise AttnmapError("this widget has no run to compute tiles from; show the run "
                               "again with attnmap.show(run)")
        args = tile_args(run, content)
        if run.stack(args["stack"]).lazy:
            _use_gpu_if_there()
        t = tiles.tile(run, **args)
    except AttnmapError as exc:
        return {**reply, "error": _one_line(str(exc))}, []
    except Exception as exc:  # noqa: BLE001 - the viewer shows it; the kernel log stays clean
        return {**reply, "error": _one_line(f"the tile could not be computed "
                                            f"({type(exc).__name__}: {exc})")}, []
    rows, cols = t.shape
    data = t.astype("<f4", copy=False).tobytes()
    return {**reply, "rows": rows, "cols": cols, "block": args["block"]}, [data]


def tile_args(run: Any, m: dict[str, Any]) -> dict[str, Any]:
    """A tile request's fields checked against `run` (the app endpoint's bounds), as keyword
    arguments of :func:`attnmap.tiles.tile`; AttnmapError with one line when one is wrong."""
    stack = m.get("stack")
    if stack is not None and (not isinstance(stack, str) or stack not in run.stacks):
        raise AttnmapError(f"the run has no {_quote(stack)} attention; it has: "
                           f"{', '.join(run.stacks)}")
    st = run.stack(stack)
    layer = _whole(m.get("layer", 0), "layer", None)
    try:
        layer = run.layer_index(layer, st.name)
    except AttnmapError as exc:
        raise AttnmapError(f"{st.name} {exc}") from None
    n_heads = st.n_heads
    head = m.get("head", 0)
    if head in tiles.HEAD_AGGREGATES:
        which: int | str = head
    else:
        if isinstance(head, str) and head.lstrip("-").isdigit():
            head = int(head)
        if isinstance(head, bool) or not isinstance(head, (int, float)) or not (
                math.isfinite(head) and float(head).is_integer()):
            raise AttnmapError(f"head must be a head number in 0..{n_heads - 1}, 'mean' or "
                               f"'max' (not {_quote(head)})")
        which = int(head)
        if not -n_heads <= which < n_heads:
            raise AttnmapError(f"{st.name} head must be in 0..{n_heads - 1} or -{n_heads}..-1 "
                               f"counting from the end (not {which})")
    block = _whole(m.get("block", 1), "block", 1, "that would be a zoom beyond exact cells "
                   "(block=1 is one cell per value)")
    q0 = _whole(m.get("q0", 0), "q0", 0)
    k0 = _whole(m.get("k0", 0), "k0", 0)
    _, _, nq, nk = st.shape
    if not (q0 < nq and k0 < nk):
        raise AttnmapError(f"the tile starts at query {q0}, key {k0}: past the {nq} × {nk} "
                           f"matrix (q0 must be in 0..{nq - 1}, k0 in 0..{nk - 1})")
    rows = -(-(nq - q0) // block) if m.get("rows") is None else _whole(m["rows"], "rows", 1)
    cols = -(-(nk - k0) // block) if m.get("cols") is None else _whole(m["cols"], "cols", 1)
    if rows * cols > MAX_CELLS:
        raise AttnmapError(f"a tile of {rows:,} × {cols:,} values is over the widget's limit "
                           f"of {MAX_CELLS:,} per request; ask for fewer rows/cols or a "
                           "larger block")
    reduce = m.get("reduce", "max")
    if reduce not in tiles.REDUCES:
        raise AttnmapError(f"reduce must be 'max' or 'sum' (not {_quote(reduce)})")
    ignore_first = m.get("ignore_first", False)
    if not isinstance(ignore_first, bool):
        raise AttnmapError(f"ignore_first must be true or false (not {_quote(ignore_first)})")
    return dict(layer=layer, head=which, stack=st.name, block=block, q0=q0, k0=k0, rows=rows,
                cols=cols, reduce=reduce, ignore_first=ignore_first)


def _whole(value: Any, name: str, least: int | None, hint: str = "") -> int:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and float(value).is_integer()
          and (least is None or value >= least))
    if not ok:
        at_least = "" if least is None else f" ≥ {least}"
        raise AttnmapError(f"{name} must be a whole number{at_least} (not {_quote(value)})"
                           + (f"; {hint}" if hint else ""))
    return int(value)


def _quote(value: Any, limit: int = 20) -> str:
    """A request's value quoted in a message, cut so that a huge value is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _use_gpu_if_there() -> None:
    """Once per kernel: compute q/k tiles with torch when a CUDA device is present."""
    global _gpu_checked
    if not _gpu_checked:
        _gpu_checked = True
        from .._tiles_torch import install

        install()
