"""The static heatmap, checked by properties of the pixels, not by snapshots."""

from __future__ import annotations

import io
import pickle
import re

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import attnmap
from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap._errors import AttnmapDeprecationWarning
from attnmap.plot import grid, overview, save_figure


def _run() -> AttentionRun:
    # One causal head whose values we know: row i spreads over keys 0..i.
    a = np.array(
        [[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.0, 0.3, 0.7, 0], [0.1, 0.2, 0.3, 0.4]],
        dtype=np.float32,
    )
    masked = np.triu(np.ones((4, 4), bool), 1)
    layers = [np.stack([a, a[::-1].copy()]), np.stack([a, a])]  # [head, query, key]
    toks = [Token(text=t, raw=t, id=i, special=(i == 0)) for i, t in
            enumerate(["<s>", "␣cat", "␣sat", "."])]
    return AttentionRun(text="cat sat.", tokens=toks,
                        stacks={"self": AttentionStack("self", layers, masked)},
                        model={"id": "toy", "causal": True})


def _pixels(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float)  # [y, x, rgb]


def _cell(fig, img, i, j):
    ax = fig.axes[0]
    x, y = ax.transData.transform((j + 0.3, i + 0.3))  # off-centre: away from printed values
    return img[int(img.shape[0] - y), int(x)]


def test_darker_means_more_attention():
    run = _run()
    fig = attnmap.heatmap(run, 0, 0, values=False)
    img = _pixels(fig)
    # row 3: 0.1 < 0.2 < 0.3 < 0.4 → brightness strictly decreasing
    bright = [_cell(fig, img, 3, j).sum() for j in range(4)]
    assert bright[0] > bright[1] > bright[2] > bright[3]
    assert _cell(fig, img, 0, 0).sum() < _cell(fig, img, 3, 3).sum()  # 1.0 darkest


def test_masked_cells_differ_from_zero():
    run = _run()
    fig = attnmap.heatmap(run, 0, 0, values=False)
    img = _pixels(fig)
    zero = _cell(fig, img, 2, 0)  # an allowed cell holding 0.0
    masked = _cell(fig, img, 0, 3)  # the future: masked
    assert np.abs(zero - masked).sum() > 30


def test_values_printed_with_two_decimals():
    fig = attnmap.heatmap(_run(), 0, 0, values=True)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"1.00", "0.90", "0.10", "0.30", "0.70", "0.40"} <= texts
    assert len(fig.axes[0].texts) == 10  # only the unmasked cells
    fig = attnmap.heatmap(_run(), 0, 0, values=False)
    assert not fig.axes[0].texts


def test_labels_axes_and_title():
    fig = attnmap.heatmap(_run(), -1, 1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["<s>", "␣cat", "␣sat", "."]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<s>", "␣cat", "␣sat", "."]
    assert ax.get_ylabel() == "query: the token that looks (one row each)"
    assert ax.get_xlabel() == "key: the token looked at (one column each)"
    assert "layer 1" in ax.get_title() and "head 1" in ax.get_title()
    # special tokens are dimmed
    assert ax.get_yticklabels()[0].get_color() != ax.get_yticklabels()[1].get_color()


def test_aggregate_and_grids():
    run = _run()
    fig = attnmap.heatmap(run, 0, "mean", values=True)
    assert "mean of 2 heads" in fig.axes[0].get_title()
    # the old spelling still works for one release, and says what replaces it
    with pytest.warns(AttnmapDeprecationWarning, match="head='mean'"):
        old = attnmap.heatmap(run, 0, None, aggregate="mean", values=True)
    assert old.axes[0].get_title() == fig.axes[0].get_title()
    assert len([a for a in grid(run, 0).axes if a.get_title().startswith("head")]) == 2
    assert len(overview(run).axes) == 2 * 2 + 1  # panels + colour bar


def test_errors():
    run = _run()
    with pytest.raises(AttnmapError, match=r"0\.\.1"):
        attnmap.heatmap(run, 5, 0)
    with pytest.raises(AttnmapError, match="'mean' / 'max'"):
        attnmap.heatmap(run, 0, "median")


@pytest.mark.parametrize("ext,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"),
                                       (".pdf", b"%PDF")])
def test_formats(tmp_path, ext, magic):
    path = save_figure(attnmap.heatmap(_run(), 0, 0), tmp_path / f"h{ext}")
    assert path.read_bytes()[:5].startswith(magic)


def test_dpi_changes_png_size(tmp_path):
    from matplotlib.image import imread

    fig = attnmap.heatmap(_run(), 0, 0)
    small = imread(save_figure(fig, tmp_path / "a.png", dpi=50))
    big = imread(save_figure(fig, tmp_path / "b.png", dpi=100))
    assert abs(big.shape[1] / small.shape[1] - 2) < 0.05


def test_long_input_hides_values_and_thins_labels():
    n = 300
    a = np.full((1, n, n), 1.0 / n, np.float32)
    toks = [Token(text=f"w{i}", raw=f"w{i}", id=i) for i in range(n)]
    run = AttentionRun(text="x", tokens=toks, model={"id": "toy"},
                       stacks={"self": AttentionStack("self", [a], np.zeros((n, n), bool))})
    fig = attnmap.heatmap(run, 0, 0)
    ax = fig.axes[0]
    assert not ax.texts
    assert 10 < len(ax.get_yticklabels()) < n


def test_predictions_column_beside_rows():
    run = _run()
    run.extra["predictions_kind"] = "next-token"
    run.extra["predictions"] = [
        {"position": i, "token": t.text,
         "top": [{"token": "␣cat", "p": 0.6}],
         "next": None if i == 3 else {"token": run.tokens[i + 1].text, "p": 0.1,
                                      "rank": 1 if i == 0 else 4, "surprisal": 3.3}}
        for i, t in enumerate(run.tokens)]
    fig = attnmap.heatmap(run, 0, 0, values=False)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "␣cat  0.60" in texts  # row 0: top-1 was right
    assert "␣cat  0.60   ✗ ␣sat #4" in texts  # row 1: the true next token ranked 4th
    assert sum("✗" in t for t in texts) == 2
    plain = attnmap.heatmap(run, 0, 0, values=False, predictions=False)
    assert not plain.axes[0].texts
    del run.extra["predictions"]
    with pytest.raises(AttnmapError, match="--predictions"):
        attnmap.heatmap(run, 0, 0, predictions=True)


# --- figures for papers ----------------------------------------------------------------------
def _pdf_fonts(data: bytes) -> tuple[bool, bool]:
    """(TrueType embedded, Type 3 used) read from the PDF's font objects, which matplotlib
    writes uncompressed."""
    truetype = b"/FontFile2" in data and re.search(rb"/Subtype\s*/(TrueType|CIDFontType2)", data)
    return bool(truetype), bool(re.search(rb"/Subtype\s*/Type3", data))


def test_detector_sees_type3_in_a_plain_matplotlib_pdf():
    # the check below can fail: matplotlib's own default is Type 3
    from matplotlib.figure import Figure

    fig = Figure()
    fig.text(0.5, 0.5, "cat")
    buf = io.BytesIO()
    with matplotlib.rc_context({"pdf.fonttype": 3}):
        fig.savefig(buf, format="pdf")
    assert _pdf_fonts(buf.getvalue()) == (False, True)


def test_pdf_embeds_truetype_and_leaves_rcparams_alone(tmp_path):
    with matplotlib.rc_context({"pdf.fonttype": 3, "svg.fonttype": "path"}):
        fig = attnmap.heatmap(_run(), 0, 0, values=True)
        data = save_figure(fig, tmp_path / "h.pdf").read_bytes()
        assert _pdf_fonts(data) == (True, False)
        # the user's own fig.savefig gets the same fonts
        buf = io.BytesIO()
        fig.savefig(buf, format="pdf")
        assert _pdf_fonts(buf.getvalue()) == (True, False)
        assert matplotlib.rcParams["pdf.fonttype"] == 3
        assert matplotlib.rcParams["svg.fonttype"] == "path"


def test_svg_keeps_token_text_as_escaped_text(tmp_path):
    run = _run()
    run.tokens[3] = Token(text="<b>&", raw="<b>&", id=3)
    fig = attnmap.heatmap(run, 0, 0, values=True)
    svg = save_figure(fig, tmp_path / "h.svg").read_text("utf-8")
    texts = re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)
    assert texts.count("␣cat") == 2  # one label per axis
    assert texts.count("&lt;b&gt;&amp;") == 2  # token text is data, never markup
    assert "0.90" in texts
    assert "<b>" not in svg
    grid_svg = io.BytesIO()
    grid(run, 0).savefig(grid_svg, format="svg")
    assert "<text" in grid_svg.getvalue().decode()


def test_paper_figures_pickle():
    fig = attnmap.heatmap(_run(), 0, 0)
    back = pickle.loads(pickle.dumps(fig))
    assert type(back) is type(fig)
    assert back.axes[0].get_title() == fig.axes[0].get_title()


def test_heatmap_draws_into_the_users_axes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1])
    got = attnmap.heatmap(_run(), 0, 1, ax=right, scale="log")
    assert got is fig  # the user's figure, not a new one
    assert len(right.images) == 1 and not left.images  # drawn where asked, nothing else touched
    assert right.get_title().endswith("layer 0 · head 1")
    assert right.images[0].norm.__class__.__name__ == "LogNorm"
    with pytest.raises(AttnmapError, match="ax="):
        attnmap.heatmap(_run(), 0, "all", ax=right)
