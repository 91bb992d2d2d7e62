"""One vocabulary for the options every output and command shares (standard library only).

=================  =====================================================================
``stack``          ``self``, ``encoder``, ``decoder`` or ``cross`` (None: the run's first)
``layer``          0-based; negative counts from the end
``head``           a head number, ``"mean"`` or ``"max"`` over the layer's heads
                   (``render``/``heatmap`` also take ``"all"``: a grid of every head)
``scale``          colour scale: ``"unit"`` (0–1), ``"data"`` (0 to the largest value
                   shown) or ``"log"`` (log-spaced, for attention spread thin)
``ignore_first``   leave the first key token out when scaling colours and pattern scores
                   (attention sinks: BOS/[CLS] take most of the weight)
``top_k``          how many predictions per position (CLI ``--top-k``/``-k``); ``--top N``
                   only ever means "show the first N rows of a table"
=================  =====================================================================

Old spellings (``aggregate=``, ``scale="head"``, ``exclude_first``, ``--exclude-first``,
``predict --top``, ``html --top``) still work for one release with a deprecation warning.
"""

from __future__ import annotations

from typing import Any

from ._errors import AttnmapError, deprecated

STACKS = ("self", "encoder", "decoder", "cross")
AGGREGATES = ("mean", "max")
SCALES = ("unit", "data", "log")
VIEWS = ("heatmap", "heads", "layers", "generated")  # generated: rows of generated tokens


def check_scale(scale: Any, *, stacklevel: int = 4) -> str:
    """`scale` in the shared vocabulary; the viewer's old ``"head"`` warns and means data."""
    if scale == "head":
        deprecated("scale='head'", "scale='data' (0 to the largest value shown)",
                   stacklevel=stacklevel)
        return "data"
    if scale not in SCALES:
        raise AttnmapError(f"scale must be {', '.join(map(repr, SCALES))} (not {scale!r})")
    return str(scale)


def check_head(head: Any, *, allow_all: bool = False) -> int | str:
    """A head number, 'mean' or 'max' (and 'all' where a grid can be drawn)."""
    words = AGGREGATES + (("all",) if allow_all else ())
    if isinstance(head, str) and head in words:
        return head
    if isinstance(head, bool) or not isinstance(head, int):
        try:
            import numpy as np

            if isinstance(head, np.integer):
                return int(head)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
        raise AttnmapError(
            f"head must be a head number or {' / '.join(map(repr, words))} (not {head!r})")
    return head


def merge_aggregate(head: Any, aggregate: str | None) -> Any:
    """Fold the old ``aggregate=`` keyword into `head` (with a deprecation warning)."""
    if aggregate is None:
        return head
    deprecated("aggregate=", "head='mean' or head='max'", stacklevel=4)
    if aggregate not in AGGREGATES:
        raise AttnmapError(f"aggregate must be mean or max (not {aggregate!r})")
    return aggregate
