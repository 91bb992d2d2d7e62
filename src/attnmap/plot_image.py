"""Attention over an image: one query token's row laid over the picture (matplotlib).

The row of the chosen query (CLS by default, any patch, or for a vision-language model a text
token) is read at the patch keys, laid out on the patch grid, upsampled to the image and drawn
translucent in the run's colormap over the thumbnail the run keeps. Tokens that are not patches
(CLS, registers, text) have no place on the picture; their share of the row is printed in the
title, so the colours are never mistaken for the whole row.
"""

from __future__ import annotations

import io
import math
from typing import Any, cast

import numpy as np

from ._errors import AttnmapError
from ._options import AGGREGATES
from .patches import (
    default_query,
    image_meta,
    patch_indices,
    query_row,
    thumbnail_bytes,
    to_grid,
)
from .plot import _title, _what, head_matrix, new_figure, value_label
from .run import AttentionRun

ALPHA = 0.6


def is_image_run(run: AttentionRun) -> bool:
    return image_meta(run) is not None


def thumbnail(run: AttentionRun) -> np.ndarray:
    """The run's thumbnail as an RGB array ``[height, width, 3]`` (grey when it has none)."""
    meta = image_meta(run)
    if meta is None:
        raise AttnmapError("this run was not made from an image; draw its heatmap instead")
    data = thumbnail_bytes(run)
    if data is None:
        w, h = meta["width"], meta["height"]
        s = min(1.0, 512 / max(w, h))
        return np.full((max(1, round(h * s)), max(1, round(w * s)), 3), 200, dtype=np.uint8)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def check_query(run: AttentionRun, query: int | None) -> int | None:
    """`query` checked against the run's tokens (None: the run's default query)."""
    if query is None:
        return default_query(run)
    n = len(run.tokens)
    if not isinstance(query, (int, np.integer)) or isinstance(query, bool) or not -n <= query < n:
        raise AttnmapError(f"query must be a token position in 0..{n - 1} (not {query!r}); "
                           "`attnmap info --run FILE` lists the tokens")
    return int(query) % n


def query_label(run: AttentionRun, query: int | None) -> str:
    if query is None:
        return "mean over patch queries"
    return f"query {query} {run.tokens[query].text}"


def patch_map(run: AttentionRun, layer: int, head: int | str, *, query: int | None = None,
              stack: str | None = None) -> tuple[np.ndarray, float]:
    """The query's attention at the patch keys ``[rows, cols]``, and the row's share that falls
    outside the patches (CLS, registers, text). `query` None: the run's default query
    (CLS; a VLM's last token; the mean over patch queries for a model without CLS)."""
    meta = image_meta(run)
    if meta is None:
        raise AttnmapError("this run was not made from an image; draw its heatmap instead")
    query = check_query(run, query)
    matrix = head_matrix(run, layer, head, stack=stack)  # [query, key]
    row = query_row(matrix, query, run.tokens)  # [key]
    grid = to_grid(row, run.tokens, (meta["grid"][0], meta["grid"][1]))  # [rows, cols]
    idx = patch_indices(run.tokens)
    outside = float(row.sum() - row[idx].sum())
    return grid, outside


def _extent(run: AttentionRun, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the patch grid lies on the thumbnail (left, right, bottom, top), in its pixels."""
    meta = image_meta(run) or {}
    sx, sy = shape[1] / meta["width"], shape[0] / meta["height"]
    found = (run.tokens[int(i)].box for i in patch_indices(run.tokens))
    boxes = [b for b in found if b is not None]
    if not boxes:
        return 0.0, float(shape[1]), float(shape[0]), 0.0
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    return x0 * sx, x1 * sx, y1 * sy, y0 * sy


def draw_overlay(ax: Any, run: AttentionRun, grid: np.ndarray, *, cmap: str = "Blues",
                 vmax: float | None = None, alpha: float = ALPHA,
                 interpolation: str = "nearest") -> Any:
    """The thumbnail with `grid` ``[rows, cols]`` over it, upsampled to the patches' pixels."""
    img = thumbnail(run)
    ax.imshow(img, interpolation="antialiased")
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    vmax = vmax if vmax is not None else (top if top > 0 else 1.0)
    heat = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=vmax, alpha=alpha,
                     extent=_extent(run, img.shape[:2]), interpolation=interpolation)
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return heat


def overlay(run: AttentionRun, layer: int, head: int | str = 0, *, query: int | None = None,
            stack: str | None = None, cmap: str = "Blues", title: str | None = None,
            smooth: bool = False) -> Any:
    """One head (or the heads' mean/max) as a translucent overlay on the image: the attention
    of `query` (default: CLS; for a VLM the last token) to every patch."""
    query = check_query(run, query)
    li = run.layer_index(layer, stack)
    if head not in AGGREGATES:
        run.head_index(cast(int, head), stack)
    grid, outside = patch_map(run, li, head, query=query, stack=stack)
    img = thumbnail(run)
    h, w = img.shape[:2]
    scale = 5.0 / max(h, w)
    fig = new_figure(w * scale + 1.4, h * scale + 0.9)
    ax = fig.add_subplot(1, 1, 1)
    heat = draw_overlay(ax, run, grid, cmap=cmap,
                        interpolation="bilinear" if smooth else "nearest")
    what = _what(run, li, head, stack)
    note = f"{query_label(run, query)} · {outside:.2f} of the row off the picture"
    fig.suptitle(title or _title(run, stack, what), fontsize=10)
    ax.set_title(note, fontsize=8)
    fig.colorbar(heat, ax=ax, shrink=0.8, label=value_label(run))
    return fig


def overlay_grid(run: AttentionRun, layer: int, *, query: int | None = None,
                 stack: str | None = None, cmap: str = "Blues", title: str | None = None,
                 ) -> Any:
    """Every head of one layer as overlays, then the mean and max over heads; one colour bar."""
    query = check_query(run, query)
    li = run.layer_index(layer, stack)
    n_heads = run.stack(stack).n_heads
    if n_heads > 64:
        raise AttnmapError(f"{n_heads} heads are too many overlays for one figure; draw one "
                           "with --head N or --head mean")
    names: list[int | str] = [*range(n_heads), *(("mean", "max") if n_heads > 1 else ())]
    grids = [patch_map(run, li, h, query=query, stack=stack)[0] for h in names]
    vmax = max(float(np.nanmax(g)) if np.isfinite(g).any() else 0.0 for g in grids) or 1.0
    cols = min(len(names), 4 if len(names) <= 8 else 6)
    rows = math.ceil(len(names) / cols)
    img = thumbnail(run)
    aspect = img.shape[0] / img.shape[1]
    panel = 2.4
    fig = new_figure(cols * panel + 1.0, rows * (panel * aspect + 0.35) + 0.7)
    heat = None
    for k, (name, g) in enumerate(zip(names, grids)):
        ax = fig.add_subplot(rows, cols, k + 1)
        heat = draw_overlay(ax, run, g, cmap=cmap, vmax=vmax)
        ax.set_title(f"head {name}" if isinstance(name, int) else f"{name} of heads",
                     fontsize=8)
    fig.suptitle(title or _title(run, stack, f"layer {li} · all heads · "
                                 f"{query_label(run, query)}"), fontsize=10)
    fig.colorbar(heat, ax=fig.axes, shrink=0.6, label=value_label(run))
    return fig
