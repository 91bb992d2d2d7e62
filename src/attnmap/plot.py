"""Static heatmaps (PNG / SVG / PDF) with matplotlib.

Query tokens run down the y axis, key tokens along the x axis; darker = more attention; each
score printed in its cell when cells are big enough; masked cells (a causal model's future)
hatched grey, never drawn as 0.

Figures are made for papers: saved PDFs embed TrueType fonts (``pdf.fonttype`` 42, not
Type 3) and SVG text stays ``<text>`` (``svg.fonttype`` 'none', not outlines). The settings
apply only while one of our figures is saved (``paper_fonts``), so the user's rcParams stay
as they are; see docs/figures.md. Other figures built from these pieces (``attnmap.diff``)
use the public helpers ``new_figure``, ``cell_inches``, ``draw_matrix`` and ``save_figure``.
"""

from __future__ import annotations

import math
import os
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ._errors import AttnmapError
from ._options import AGGREGATES, check_head, check_scale, merge_aggregate
from .diff import Diff
from .run import AttentionRun
from .tokens import Token

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
MASK_FACE = "#d9d9d9"
MASK_HATCH = "#9a9a9a"
SPECIAL_COLOR = "#8c8c8c"


def output_format(path: str | os.PathLike[str]) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise AttnmapError(
            f"output {str(path)!r} must end in .png, .svg or .pdf (not {ext or 'no extension'!r})"
        )
    return FORMATS[ext]


def head_matrix(
    run: AttentionRun,
    layer: int,
    head: int | str | None,
    *,
    stack: str | None = None,
    aggregate: str | None = None,
) -> np.ndarray:
    """The matrix to draw: one head, or the heads' ``"mean"``/``"max"`` ``[query, key]``."""
    head = merge_aggregate(head, aggregate)
    if head is None:
        raise AttnmapError("give a head number, or 'mean' or 'max' over the heads")
    head = check_head(head)
    if head in AGGREGATES:
        heads = run.layer(layer, stack)  # [head, query, key]
        return heads.mean(axis=0) if head == "mean" else heads.max(axis=0)
    return run.head(layer, cast(int, head), stack)


@contextmanager
def literal_text() -> Iterator[None]:
    """Inside this block every string matplotlib draws is literal: a token ``$5-$10`` or
    ``$\\notacmd$`` shows as typed, never as math (the Text objects keep the setting)."""
    import matplotlib as mpl

    with mpl.rc_context({"text.parse_math": False}):
        yield


def drawable(text: str) -> str:
    """`text` as the renderer can draw it: control characters and lone surrogates (which a
    hand-made token or model id may hold) spelled out as ``⟨U+001B⟩``; a newline (a title's
    second line) stays."""
    if text.isprintable():
        return text
    return "".join(f"⟨U+{ord(c):04X}⟩" if c != "\n" and unicodedata.category(c) in ("Cc", "Cs")
                   else c for c in text)


def _literal(fn: Any) -> Any:
    """Decorator: draw the whole figure with :func:`literal_text`, every text drawable."""
    import functools

    from matplotlib.text import Text

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with literal_text():
            fig = fn(*args, **kwargs)
        for t in fig.findobj(Text):
            shown = t.get_text()
            if isinstance(shown, str) and not shown.isprintable():
                t.set_text(drawable(shown))
        return fig

    return wrapper


# Fonts a paper's PDF/SVG can use: TrueType (Type 42) in PDF and PostScript, text as text in SVG.
PAPER_RC: dict[RcKeyType, Any] = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


@contextmanager
def paper_fonts() -> Iterator[None]:
    """Inside this block, saved figures embed TrueType fonts (PDF) and keep text as text
    (SVG); the global rcParams are back as they were afterwards."""
    import matplotlib as mpl

    with mpl.rc_context(PAPER_RC):
        yield


def __getattr__(name: str) -> Any:
    # PaperFigure subclasses matplotlib's Figure, made on first use so that importing this
    # module does not import matplotlib (the CLI checks an output name before that).
    if name == "PaperFigure":
        return _paper_figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _paper_figure_class() -> Any:
    cls = globals().get("PaperFigure")
    if cls is not None:
        return cls
    from matplotlib.figure import Figure

    class PaperFigure(Figure):
        """A Figure whose ``savefig`` uses ``paper_fonts``, also when the user calls it."""

        def savefig(self, *args: Any, **kwargs: Any) -> Any:
            # a token in a script the font lacks draws as a box, as in save_figure: no warning
            with paper_fonts(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Glyph .* missing")
                # very long labels squeeze the axes; the figure is still written, as drawn
                warnings.filterwarnings("ignore", message=r"constrained_layout not applied")
                return super().savefig(*args, **kwargs)

    PaperFigure.__module__ = __name__  # pickled as attnmap.plot.PaperFigure
    PaperFigure.__qualname__ = "PaperFigure"
    globals()["PaperFigure"] = PaperFigure
    return PaperFigure


def new_figure(width: float, height: float) -> Any:
    """An empty figure of `width` × `height` inches, constrained layout, saved with
    ``paper_fonts``: the canvas every attnmap figure starts from."""
    return _paper_figure_class()(figsize=(width, height), layout="constrained")


def cell_inches(nq: int, nk: int) -> float:
    """The side of one heatmap cell in inches for `nq` query × `nk` key tokens."""
    # Big readable cells for a sentence, shrinking so a long text still fits ~14 inches.
    return float(min(0.5, max(0.012, 14.0 / max(nq, nk, 1))))


def _tick_positions(n: int, cell_pt: float) -> list[int]:
    step = max(1, math.ceil(7.0 / max(cell_pt, 1e-6)))  # labels need ~7 pt of room each
    return list(range(0, n, step))


def _label_tokens(ax: Any, axis: str, tokens: list[Token], cell_pt: float) -> None:
    pos = _tick_positions(len(tokens), cell_pt)
    size = float(min(10.0, max(4.0, cell_pt * 0.7)))
    labels = [drawable(tokens[i].text) for i in pos]
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=90, fontsize=size)
        ticklabels = ax.get_xticklabels()
    else:
        ax.set_yticks(pos, labels, fontsize=size)
        ticklabels = ax.get_yticklabels()
    for i, tl in zip(pos, ticklabels):
        tl.set_fontfamily(["DejaVu Sans", "sans-serif"])
        if tokens[i].special:
            tl.set_color(SPECIAL_COLOR)


def draw_matrix(
    ax: Any,
    matrix: np.ndarray,
    masked: np.ndarray,
    *,
    query_tokens: list[Token] | None = None,
    key_tokens: list[Token] | None = None,
    values: bool | None = None,
    vmax: float = 1.0,
    cmap: str = "Blues",
    cell_pt: float | None = None,
    vmin: float = 0.0,
    log: bool = False,
) -> Any:
    """Draw one ``[query, key]`` matrix into `ax`; returns the image (for a colour bar).

    With `log` the colours are log-spaced over three decades below `vmax`."""
    import matplotlib as mpl

    nq, nk = matrix.shape
    if cmap not in mpl.colormaps:
        raise AttnmapError(f"unknown colormap {cmap!r}; try Blues, viridis, magma or Greys")
    # masked cells are transparent: the hatched background shows through
    cm = mpl.colormaps[cmap].with_extremes(bad=(0, 0, 0, 0))
    data = np.ma.masked_array(matrix, mask=masked)
    if log:
        norm: mpl.colors.Normalize = mpl.colors.LogNorm(vmin=vmax * 1e-3, vmax=vmax, clip=True)
        data = np.ma.masked_array(np.maximum(matrix, vmax * 1e-3), mask=masked)
    else:
        norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
    ax.patch.set_facecolor(MASK_FACE)
    ax.patch.set_hatch("////")
    ax.patch.set_edgecolor(MASK_HATCH)
    img = ax.imshow(data, cmap=cm, norm=norm, interpolation="nearest", aspect="equal")
    if cell_pt is None:
        bbox = ax.get_position()
        fig_w = ax.figure.get_figwidth()
        cell_pt = bbox.width * fig_w * 72.0 / max(nk, 1)
    if query_tokens is not None:
        _label_tokens(ax, "y", query_tokens, cell_pt)
    else:
        ax.set_yticks([])
    if key_tokens is not None:
        _label_tokens(ax, "x", key_tokens, cell_pt)
    else:
        ax.set_xticks([])
    if values is None:
        values = cell_pt >= 16.0
    if values:
        size = float(min(8.0, max(3.0, cell_pt * 0.3)))
        rgba = cm(norm(matrix))  # [query, key, 4]
        lum = 0.2126 * rgba[..., 0] + 0.7152 * rgba[..., 1] + 0.0722 * rgba[..., 2]
        for i in range(nq):
            for j in range(nk):
                if masked[i, j]:
                    continue
                label = f"{matrix[i, j]:.2f}"
                if label == "-0.00":  # a tiny negative difference reads as zero
                    label = "0.00"
                ax.text(j, i, label, ha="center", va="center", fontsize=size,
                        color="white" if lum[i, j] < 0.5 else "black")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return img


ROLE_COLORS = {"system": "#9e9e9e", "user": "#4c78a8", "assistant": "#f58518",
               "tool": "#54a24b"}
OTHER_ROLE_COLOR = "#b279a2"


def role_segments(tokens: list[Token]) -> list[tuple[int, int, str]]:
    """(first, end, role) runs of tokens of one chat message; none for plain text."""
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        msg = tokens[i].message
        j = i + 1
        while j < len(tokens) and tokens[j].message == msg:
            j += 1
        if msg is not None:
            out.append((i, j, str(tokens[i].role)))
        i = j
    return out


def role_bands(ax: Any, query_tokens: list[Token], key_tokens: list[Token], *,
               cell_pt: float) -> None:
    """Thin coloured bands along both axes of a chat run: which message (and role) each
    query and key token belongs to; template tokens are drawn paler than message content."""
    from matplotlib.patches import Rectangle

    q_seg, k_seg = role_segments(query_tokens), role_segments(key_tokens)
    if not q_seg and not k_seg:
        return
    nq = len(query_tokens)
    thick = max(7.0, min(12.0, 0.8 * cell_pt))  # points
    x0, x1 = ax.get_xlim()
    width_cells = x1 - x0
    top = ax.inset_axes((0.0, 1.0 + 1.0 / (nq * cell_pt), 1.0, thick / (nq * cell_pt)))
    left = ax.inset_axes((-(thick + 1.0) / (width_cells * cell_pt), 0.0,
                          thick / (width_cells * cell_pt), 1.0))
    size = float(min(7.0, max(4.0, thick * 0.7)))
    top.set_xlim(-0.5, ax.get_xlim()[1])
    top.set_ylim(0, 1)
    left.set_ylim(nq - 0.5, -0.5)
    left.set_xlim(0, 1)
    for axis, segs, toks, along_x in ((top, k_seg, key_tokens, True),
                                      (left, q_seg, query_tokens, False)):
        axis.set_axis_off()
        for a, b, role in segs:
            color = ROLE_COLORS.get(role, OTHER_ROLE_COLOR)
            for t in range(a, b):
                alpha = 0.4 if toks[t].template else 1.0
                xy = (t - 0.5, 0) if along_x else (0, t - 0.5)
                axis.add_patch(Rectangle(xy, 1, 1, facecolor=color, alpha=alpha,
                                         edgecolor="none"))
            if (b - a) * cell_pt >= 6 * size:
                mid = (a + b - 1) / 2
                kw = dict(fontsize=size, color="black", ha="center", va="center", clip_on=True)
                if along_x:
                    axis.text(mid, 0.5, role, **kw)
                else:
                    axis.text(0.5, mid, role, rotation=90, **kw)
    ax.tick_params(axis="y", pad=thick + 3)


def _vmax(matrix: np.ndarray, masked: np.ndarray, scale: str, ignore_first: bool = False
          ) -> float:
    """The top of the colour scale: 1 (unit) or the largest value shown (data, log); with
    `ignore_first` the first key column does not count (an attention sink)."""
    if scale == "unit":
        return 1.0
    keep = ~masked
    if ignore_first and keep.shape[1] > 1:
        keep = keep.copy()
        keep[:, 0] = False
    m = matrix[keep]
    return float(m.max()) if m.size and m.max() > 0 else 1.0


METHOD_LABELS = {
    "raw": "attention",
    "rollout": "rollout: share of the output traced to each input",
    "grad": "relevance (attention × gradient)",
    "value-norm": "norm-weighted attention ‖α·f(x)‖",
}


def value_label(run: AttentionRun) -> str:
    """What the colours mean for this run's method (the colour bar's label)."""
    return METHOD_LABELS.get(str(run.model.get("method") or "raw"), "attention")


def default_layer(run: AttentionRun) -> int:
    """Layer 0 for raw attention; the last layer for methods that accumulate over layers
    (rollout and attention × gradient: layer l shows the result after layer l)."""
    return -1 if run.model.get("method") in ("rollout", "grad") else 0


def _title(run: AttentionRun, stack: str | None, what: str) -> str:
    parts = [str(run.model.get("id", "model"))]
    name = run.stack(stack).name
    if name != "self":
        parts.append(f"{name} attention")
    method = run.model.get("method")
    if method and method != "raw":
        parts.append(str(method))
        if run.model.get("method_target"):
            parts.append(f"explaining the {run.model['method_target']}")
    parts.append(what)
    return " · ".join(parts)


def _what(run: AttentionRun, li: int, head: int | str, stack: str | None) -> str:
    method = run.model.get("method")
    if method in ("rollout", "grad"):
        return f"after layer {li}"  # one combined head per layer
    if head in AGGREGATES:
        return f"layer {li} · {head} of {run.stack(stack).n_heads} heads"
    return f"layer {li} · head {run.head_index(cast(int, head), stack)}"


@_literal
def heatmap(
    run: AttentionRun,
    layer: int | None = None,
    head: int | str | None = 0,
    *,
    stack: str | None = None,
    scale: str = "unit",
    cmap: str = "Blues",
    values: bool | None = None,
    ignore_first: bool = False,
    title: str | None = None,
    predictions: bool | None = None,
    ax: Any = None,
    aggregate: str | None = None,
    generated_only: bool = False,
) -> Any:
    """The heatmap of one head as a Figure: query tokens down, key tokens across.

    `head` is a head number, ``"mean"`` or ``"max"`` over the layer's heads, or ``"all"`` for
    the layer's grid. `layer` defaults to 0 (the last layer for rollout and gradient runs).
    `scale` is ``"unit"`` (0–1), ``"data"`` (0 to the largest value shown) or ``"log"``;
    `ignore_first` leaves the first key out of that largest value. With `ax` the matrix is
    drawn into your matplotlib Axes (its figure is returned). With `predictions` (default:
    when the run has them and they belong to the query rows), a column right of the matrix
    gives each row's top-1 prediction and its probability, and marks ✗ where the token that
    really came next was not the top-1. ``aggregate=`` is the old spelling of ``head="mean"``.
    With `generated_only` (a run from :func:`attnmap.generate`) the rows are the generated
    tokens only, the columns every token.
    """
    head = merge_aggregate(head, aggregate)
    scale = check_scale(scale, stacklevel=5)
    layer = default_layer(run) if layer is None else layer
    head = check_head(head, allow_all=True)
    if head == "all":
        if ax is not None:
            raise AttnmapError("head='all' draws a grid of axes; pass one head with ax=")
        return grid(run, layer, stack=stack, scale=scale, cmap=cmap, title=title)
    li = run.layer_index(layer, stack)
    matrix = head_matrix(run, li, head, stack=stack)
    masked = run.stack(stack).mask(li)  # the mask this layer used
    qt, kt = run.query_tokens(stack), run.key_tokens(stack)
    preds = _row_predictions(run, stack) if predictions is not False else None
    if generated_only:
        rows = generated_rows(run, stack)
        matrix, masked, qt = matrix[rows], masked[rows], [qt[i] for i in rows]
        if preds is not None:
            preds = {j: preds[i] for j, i in enumerate(rows) if i in preds} or None
    nq, nk = matrix.shape
    cell = cell_inches(nq, nk)
    if predictions and preds is None:
        raise AttnmapError("this run has no predictions for these rows; capture it with "
                           "--predictions (causal, masked or encoder-decoder LMs)")
    if ax is None:
        label_room = 0.25 + 0.075 * max((len(t.text) for t in [*qt, *kt]), default=1)
        label_room = min(label_room, 2.5)
        pred_width = 2.2 if preds else 0.0
        fig = new_figure(nk * cell + label_room + 1.3 + pred_width,
                         nq * cell + label_room + 0.8)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
        bbox = ax.get_position()
        cell = min(bbox.width * fig.get_figwidth() / max(nk, 1),
                   bbox.height * fig.get_figheight() / max(nq, 1))
        pred_width = 2.2 if preds else 0.0
    vmax = _vmax(matrix, masked, scale, ignore_first)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing")
        img = draw_matrix(ax, matrix, masked, query_tokens=qt, key_tokens=kt, values=values,
                          vmax=vmax, cmap=cmap, cell_pt=cell * 72.0, log=scale == "log")
    ax.set_ylabel("query: the token that looks (one row each)")
    ax.set_xlabel("key: the token looked at (one column each)")
    ax.xaxis.set_label_position("bottom")
    ax.set_title(title or _title(run, stack, _what(run, li, head, stack)), fontsize=11)
    if preds:
        _predictions_column(ax, preds, nq, nk, pred_width / cell, cell * 72.0)
    if any(t.message is not None for t in [*qt, *kt]):
        role_bands(ax, qt, kt, cell_pt=cell * 72.0)
        ax.title.set_y(1.06)
    cb = fig.colorbar(img, ax=ax, shrink=min(1.0, max(0.3, 4.0 / max(nq * cell, 1e-6))))
    cb.set_label(value_label(run))
    return fig


def _row_predictions(run: AttentionRun, stack: str | None) -> dict[int, dict[str, Any]] | None:
    """Prediction records by query row, when the run's predictions are about these rows."""
    preds = run.predictions
    if not preds:
        return None
    kind = run.extra.get("predictions_kind")
    side_is_target = run.stack(stack).name in ("decoder", "cross")
    about_target = kind == "decoder" or (kind == "generate" and bool(run.target_tokens))
    if about_target != side_is_target:
        return None
    return {int(p["position"]): p for p in preds}


def generated_rows(run: AttentionRun, stack: str | None = None) -> list[int]:
    """The query rows of generated tokens, or one line saying the run has none."""
    rows = [i for i, t in enumerate(run.query_tokens(stack)) if t.generated]
    if not rows:
        raise AttnmapError("this run has no generated tokens; make one with `attnmap "
                           "generate` (or attnmap.generate) to see the generated rows")
    return rows


@_literal
def steps(run: AttentionRun, layer: int = -1, head: int | str = "mean", *,
          stack: str | None = None, cmap: str = "Blues", title: str | None = None) -> Any:
    """One strip per generation step: the generated token's attention row over every token,
    each strip scaled to its own largest value (so a spread-out step still shows where it
    looked), with the chosen token's probability, rank and the step's entropy beside it."""
    import matplotlib as mpl

    if stack is None and run.target_tokens:
        stack = "decoder"
    li = run.layer_index(layer, stack)
    head = check_head(head)
    rows = generated_rows(run, stack)
    matrix = head_matrix(run, li, head, stack=stack)[rows]
    masked = run.stack(stack).mask(li)[rows]
    qt, kt = run.query_tokens(stack), run.key_tokens(stack)
    preds = _row_predictions(run, stack) or {}
    nq, nk = matrix.shape
    cell = cell_inches(nq, nk)
    label_room = min(2.5, 0.25 + 0.075 * max((len(t.text) for t in [*qt, *kt]), default=1))
    fig = new_figure(nk * cell + label_room + 3.2, nq * cell * 1.25 + label_room + 0.8)
    ax = fig.add_subplot()
    top = np.where(masked, 0.0, matrix).max(axis=1, keepdims=True)
    top[top <= 0] = 1.0
    scaled = np.where(masked, 0.0, matrix) / top
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing")
        draw_matrix(ax, scaled, masked, query_tokens=[qt[i] for i in rows], key_tokens=kt,
                    values=False, vmax=1.0, cmap=cmap, cell_pt=cell * 72.0)
    for j in range(1, nq):  # white gaps between the strips
        ax.axhline(j - 0.5, color="white", linewidth=max(1.0, cell * 72.0 * 0.25))
    prompt_end = min(rows)  # the first generated token: where the prompt ends
    ax.axvline(prompt_end - 0.5, color="#d62728", linewidth=1.0)
    size = float(min(9.0, max(4.0, cell * 72.0 * 0.55)))
    from matplotlib.patches import Rectangle

    ax.set_xlim(-0.5, nk - 0.5 + 3.0 / cell)
    # the label room is plain: cover the hatched background meant for masked cells
    ax.add_patch(Rectangle((nk - 0.5, -0.5), 3.0 / cell, nq, facecolor="white",
                           edgecolor="none", zorder=1.5))
    for j, i in enumerate(rows):
        rec = preds.get(i - 1)  # the step that chose token i read at i - 1
        if rec is None or rec.get("next") is None:
            continue
        nxt = rec["next"]
        label = f"p {nxt['p']:.3f}  #{nxt['rank']}"
        if rec.get("entropy") is not None:
            label += f"  H {rec['entropy']:.1f} bits"
        ax.text(nk - 0.2, j, label, va="center", ha="left", fontsize=size, zorder=3,
                color="#b2182b" if nxt["rank"] != 1 else "#222222")
    ax.set_ylabel("generated token (one strip per step)")
    ax.set_xlabel("key: every token (red line: where the prompt ends)")
    ax.set_title(title or _title(run, stack, _what(run, li, head, stack)) +
                 " · each strip scaled to its own largest value", fontsize=10)
    fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap=cmap), ax=ax,
                 shrink=0.6).set_label("share of the step's largest value")
    return fig


def _predictions_column(ax: Any, preds: dict[int, dict[str, Any]], nq: int, nk: int,
                        width_cells: float, cell_pt: float) -> None:
    """Write each row's top-1 prediction in extra room right of the matrix, in the same
    axes, so the rows line up whatever the figure's layout does."""
    from matplotlib.patches import Rectangle

    ax.set_xlim(-0.5, nk - 0.5 + width_cells)
    # the extra room is plain: cover the hatched background meant for masked cells
    ax.add_patch(Rectangle((nk - 0.5, -0.5), width_cells, nq, facecolor="white",
                           edgecolor="none", zorder=1.5))
    size = float(min(9.0, max(4.0, cell_pt * 0.55)))
    step = max(1, math.ceil(7.0 / max(cell_pt, 1e-6)))
    ax.text(nk - 0.2, -0.6, "prediction (p)", fontsize=size, va="bottom", ha="left",
            color="#555555")
    for i in range(0, nq, step):
        rec = preds.get(i)
        if rec is None:
            continue
        top = rec["top"][0]
        nxt = rec["next"]
        miss = nxt is not None and nxt["rank"] != 1
        label = f"{top['token']}  {top['p']:.2f}"
        if miss:
            label += f"   ✗ {nxt['token']} #{nxt['rank']}"
        ax.text(nk - 0.2, i, label, va="center", ha="left", fontsize=size, zorder=3,
                clip_on=True, color="#b2182b" if miss else "#222222",
                fontfamily=["DejaVu Sans", "sans-serif"])


# Beyond these a figure takes minutes to draw (~60 ms a panel) and is too big to read; no
# real model comes near them (the largest have about 128 layers and 128 heads).
GRID_MAX_HEADS = 256
OVERVIEW_MAX_LAYERS = 512
OVERVIEW_MAX_HEADS = 256
OVERVIEW_MAX_PANELS = 16_384  # 128 layers × 128 heads


def _check_panels(n_layers: int, n_heads: int, *, overview: bool) -> None:
    if not overview:
        if n_heads > GRID_MAX_HEADS:
            raise AttnmapError(f"a grid draws at most {GRID_MAX_HEADS} heads (this layer has "
                               f"{n_heads:,}); draw single heads with heatmap instead")
        return
    if n_layers > OVERVIEW_MAX_LAYERS or n_heads > OVERVIEW_MAX_HEADS or (
            n_layers * n_heads > OVERVIEW_MAX_PANELS):
        raise AttnmapError(
            f"an overview draws at most {OVERVIEW_MAX_LAYERS} layers, {OVERVIEW_MAX_HEADS} heads "
            f"and {OVERVIEW_MAX_PANELS:,} panels in all (this run: {n_layers:,} layers × "
            f"{n_heads:,} heads); draw one layer with grid, or single heads with heatmap")


@_literal
def grid(
    run: AttentionRun,
    layer: int,
    *,
    stack: str | None = None,
    scale: str = "unit",
    cmap: str = "Blues",
    title: str | None = None,
    ignore_first: bool = False,
) -> Any:
    """Every head of one layer, small multiples with one shared colour bar."""
    scale = check_scale(scale)
    st = run.stack(stack)
    li = run.layer_index(layer, stack)
    _check_panels(1, st.n_heads, overview=False)
    heads = run.layer(li, stack)  # [head, query, key]
    n_heads, nq, nk = heads.shape
    cols = min(n_heads, 4 if n_heads <= 8 else 6)
    rows = math.ceil(n_heads / cols)
    panel = 2.6
    labels = max(nq, nk) <= 24
    fig = new_figure(cols * panel + 1.0, rows * (panel + (0.6 if labels else 0.25)) + 0.6)
    masked = st.mask(li)
    vmax = max(_vmax(heads[h], masked, scale, ignore_first) for h in range(n_heads))
    img = None
    qt, kt = run.query_tokens(stack), run.key_tokens(stack)
    cell_pt = panel * 72.0 / max(nq, nk)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing")
        for h in range(n_heads):
            ax = fig.add_subplot(rows, cols, h + 1)
            img = draw_matrix(ax, heads[h], masked, query_tokens=qt if labels else None,
                              key_tokens=kt if labels else None, values=False, vmax=vmax,
                              cmap=cmap, cell_pt=cell_pt, log=scale == "log")
            ax.set_title(f"head {h}", fontsize=9)
    fig.suptitle(title or _title(run, stack, f"layer {li} · all heads"), fontsize=11)
    fig.colorbar(img, ax=fig.axes, shrink=0.6, label=value_label(run))
    return fig


@_literal
def overview(
    run: AttentionRun,
    *,
    stack: str | None = None,
    scale: str = "unit",
    cmap: str = "Blues",
    title: str | None = None,
    ignore_first: bool = False,
) -> Any:
    """Layers × heads small multiples of the whole run, no labels."""
    scale = check_scale(scale)
    st = run.stack(stack)
    n_layers, n_heads = st.n_layers, st.n_heads
    _check_panels(n_layers, n_heads, overview=True)
    panel = float(min(1.2, 14.0 / n_heads))
    fig = new_figure(n_heads * panel + 1.2, n_layers * panel + 0.8)
    img = None
    for li in range(n_layers):
        heads = run.layer(li, stack)
        masked = st.mask(li)
        vmax = max(_vmax(heads[h], masked, scale, ignore_first) for h in range(n_heads))
        for h in range(n_heads):
            ax = fig.add_subplot(n_layers, n_heads, li * n_heads + h + 1)
            img = draw_matrix(ax, heads[h], masked, values=False, vmax=vmax, cmap=cmap,
                              cell_pt=1.0, log=scale == "log")
            if li == 0:
                ax.set_title(f"h{h}", fontsize=7)
            if h == 0:
                ax.set_ylabel(f"L{li}", fontsize=7, rotation=0, labelpad=10)
    fig.suptitle(title or _title(run, stack, "layers × heads"), fontsize=11)
    fig.colorbar(img, ax=fig.axes, shrink=0.6, label=value_label(run))
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write `fig` as PNG/SVG/PDF by the path's extension; an old file is replaced only once
    the new one is complete."""
    from ._io import atomic_path

    fmt = output_format(path)
    if not 10 <= dpi <= 1200:
        raise AttnmapError(f"dpi must be in 10..1200 (not {dpi})")
    with atomic_path(path) as tmp, warnings.catch_warnings(), paper_fonts():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing")
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


CHANGED_COLOR = "#c2410c"  # a substituted token's label in a diff figure


def _one_line(text: str, limit: int = 100) -> str:
    """`text` on one line, spaces kept and other invisible characters shown (⏎, ⟨U+200B⟩),
    cut to `limit` characters with an ellipsis."""
    from .tokens import visible

    line = "".join(ch if ch == " " else visible(ch) for ch in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


@_literal
def diff_figure(d: Diff, layer: int | None = None, head: int | None = None, *,
                values: bool | None = None) -> Any:
    """Heatmaps A, B and A − B side by side (the difference on a diverging scale at 0).

    The aligned tokens label the rows and columns; a substituted pair (``d.changed``) is
    labelled ``keys→key`` (A's token, then B's), in orange and bold. Cells that either run
    masks are hatched in all three panels. The title names the model(s), the head and its
    change, and the two texts (A: …, B: …)."""
    import dataclasses

    if layer is None or head is None:
        top = d.ranking[0]
        layer = top["layer"] if layer is None else layer
        head = top["head"] if head is None else head
    a, b, delta, masked = d.matrices(layer, head)
    li, hi = d.a.layer_index(layer, d.stack), d.a.head_index(head, d.stack)
    changed = d.changed.tolist()
    toks = [dataclasses.replace(t, text=label) if c else t
            for t, label, c in zip(d.tokens, d.labels, changed)]
    n = len(toks)
    cell = cell_inches(n, n)
    side = n * cell + 1.8
    fig = new_figure(3 * side + 1.5, side + 1.4)
    lim = float(np.abs(np.where(masked, 0, delta)).max()) or 1.0
    panels = [(a, "A", "Blues", 0.0, 1.0), (b, "B", "Blues", 0.0, 1.0),
              (delta, "A − B", "RdBu_r", -lim, lim)]
    for k, (m, label, cmap, lo, hi_) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        img = draw_matrix(ax, m, masked, query_tokens=toks, key_tokens=toks,
                          values=values, vmin=lo, vmax=hi_, cmap=cmap,
                          cell_pt=cell * 72.0)
        ticks = _tick_positions(n, cell * 72.0)  # the labelled positions, as draw_matrix
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for i, tl in zip(ticks, labels):
                if changed[i]:
                    tl.set_color(CHANGED_COLOR)
                    tl.set_fontweight("bold")
        ax.set_title(label, fontsize=10)
        if k == 0:
            ax.set_ylabel("query: the token that looks")
        ax.set_xlabel("key: the token looked at")
        fig.colorbar(img, ax=ax, shrink=0.7)
    ma, mb = d.a.model.get("id"), d.b.model.get("id")
    who = f"{ma}" if ma == mb else f"A: {ma} · B: {mb}"
    r = next(x for x in d.ranking if x["layer"] == li and x["head"] == hi)
    lines = [f"{who} · layer {li} · head {hi} · mean |A−B| {r['mean_abs']:.3f} · "
             f"JS {r['js']:.3f}"]
    if d.a.text == d.b.text:
        lines.append(f"text: {_one_line(d.a.text)}")
    else:
        lines += [f"A: {_one_line(d.a.text)}", f"B: {_one_line(d.b.text)}"]
    subs = sum(changed)
    if subs:
        lines.append(f"{n} aligned tokens, {subs} substituted (orange: A→B)")
    fig.suptitle("\n".join(lines), fontsize=10)
    return fig
