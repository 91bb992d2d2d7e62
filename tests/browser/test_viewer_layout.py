"""The viewer's layout and reading aids in real Chromium: the matrix fits the window, axis
titles, the masked hatch, label clicks on long inputs, the badge legend, the relation panel's
marks, the wheel and the keys-and-mouse help."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token

from .test_viewer import ROOT, clean, draws, hooks, open_page, wait_draw, wait_js

MARK = (0xC2, 0x25, 0x5C)  # js/views/heatmap.js MARK


def canvas_pixels(page, x: float, y: float, w: int, h: int) -> np.ndarray:
    """The heatmap canvas's RGB in a rectangle of CSS pixels, as [row, column, 3]."""
    got = page.evaluate(
        f"""(() => {{
        const c = document.querySelector('{ROOT} .am-canvas'), r = window.devicePixelRatio || 1;
        const d = c.getContext('2d').getImageData(Math.round({x} * r), Math.round({y} * r),
                                                  Math.round({w} * r), Math.round({h} * r));
        return {{ w: d.width, h: d.height, data: Array.from(d.data) }};
        }})()"""
    )
    return np.array(got["data"], dtype=int).reshape(got["h"], got["w"], 4)[..., :3]


def matrix_on_screen(page) -> None:
    """The whole matrix, its labels and the canvas are inside the window."""
    g = hooks(page, "a.geometry")
    vw, vh = page.evaluate("[window.innerWidth, window.innerHeight]")
    assert g["top"] >= 0 and g["left"] >= 0
    assert g["top"] + g["y0"] + g["ph"] <= vh, (g, vh)  # the last row is on screen
    assert g["left"] + g["x0"] + g["pw"] <= vw, (g, vw)
    assert g["top"] + g["height"] <= vh and g["left"] + g["width"] <= vw
    assert g["cs"] == pytest.approx(g["fit"]) and g["ph"] == pytest.approx(g["Q"] * g["cs"])


def longest_blank_run(page, y_from: int, y_to: int) -> int:
    """The most consecutive all-white canvas rows between y_from and y_to (CSS pixels)."""
    width = hooks(page, "a.geometry.width")
    px = canvas_pixels(page, 0, y_from, int(width), y_to - y_from)
    blank = (px >= 250).all(axis=(1, 2))
    best = run = 0
    for b in blank:
        run = run + 1 if b else 0
        best = max(best, run)
    return best


# --- (8) the matrix fits the window ---------------------------------------------------------
@pytest.mark.parametrize("height", [720, 800])
def test_whole_matrix_fits_the_window_and_fit_brings_it_back(page, tmp_path, gpt2_run, height):
    page.set_viewport_size({"width": 1280, "height": height})
    open_page(page, gpt2_run, tmp_path / "fit.html")
    matrix_on_screen(page)
    # Between the title and the matrix: the axis title and the column labels, no wide gap.
    g = hooks(page, "a.geometry")
    assert longest_blank_run(page, 24, int(g["y0"])) < 24
    page.click(".am-zoom-in")
    page.click(".am-zoom-in")
    assert hooks(page, "a.state.cs") > g["fit"]
    n = draws(page)
    page.click(".am-fit")
    wait_draw(page, n)
    assert hooks(page, "a.state.cs") is None
    matrix_on_screen(page)
    assert not page.evaluate("document.scrollingElement.scrollTop")
    clean(page)


def test_canvas_follows_the_window_height(page, tmp_path, gpt2_run):
    page.set_viewport_size({"width": 1280, "height": 900})
    open_page(page, gpt2_run, tmp_path / "h.html")
    tall = hooks(page, "a.geometry")
    n = draws(page)
    page.set_viewport_size({"width": 1280, "height": 640})
    wait_draw(page, n)
    short = hooks(page, "a.geometry")
    assert short["ph"] < tall["ph"]
    matrix_on_screen(page)
    clean(page)


# --- (4) axis titles ---------------------------------------------------------------------
def test_axis_titles_name_the_sides_in_plain_words(page, tmp_path, gpt2_run):
    open_page(page, gpt2_run, tmp_path / "axes.html")
    axes = hooks(page, "a.axes")
    assert "query: the token doing the looking" in axes["query"]["text"]
    assert "key: the token looked at" in axes["key"]["text"]
    g = hooks(page, "a.geometry")
    # The key title is written above the column labels, the query title left of the row labels.
    assert 24 <= axes["key"]["y"] < g["y0"] - g["lh"]
    assert axes["query"]["x"] < g["x0"] - g["lw"]
    key_ink = canvas_pixels(page, axes["key"]["x"], axes["key"]["y"] - 5, 120, 10)
    query_ink = canvas_pixels(page, axes["query"]["x"] - 5, axes["query"]["y"] - 60, 10, 120)
    assert (key_ink < 200).any(axis=2).sum() > 40 and (query_ink < 200).any(axis=2).sum() > 40
    clean(page)


# --- masked cells: the figures' hatch ------------------------------------------------------
def test_masked_cells_are_hatched_like_the_figures(page, tmp_path, gpt2_run):
    open_page(page, gpt2_run, tmp_path / "hatch.html")
    g = hooks(page, "a.geometry")
    assert g["cs"] > 20
    # The top-right corner of a causal matrix is masked; take a patch inside one cell.
    x, y = g["x0"] + g["pw"] - g["cs"] + 3, g["y0"] + 3
    patch = canvas_pixels(page, x, y, int(g["cs"]) - 6, int(g["cs"]) - 6)
    assert (patch[..., 0] == patch[..., 1]).all() and (patch[..., 1] == patch[..., 2]).all()
    assert patch.min() >= 185 and patch.max() <= 235  # quiet greys, never white, never a colour
    levels = patch[..., 0]
    assert levels.max() - levels.min() >= 20  # lines on a face, not one flat grey per cell
    # The lines run diagonally ("/"): constant along x + y, changing along a row.
    along = np.abs(levels[1:, :-1] - levels[:-1, 1:])
    assert along.mean() < 2 and np.abs(np.diff(levels, axis=1)).mean() > 4
    clean(page)


# --- (9) label clicks on a long input -----------------------------------------------------
def long_run(n: int = 347) -> AttentionRun:
    rng = np.random.default_rng(0)
    w = rng.random((1, n, n)).astype(np.float32)  # [head, query, key]
    w /= w.sum(axis=2, keepdims=True)
    toks, pos = [], 0
    for i in range(n):
        text = f"w{i}"
        toks.append(Token(text=text, raw=text, id=i, start=pos, end=pos + len(text)))
        pos += len(text) + 1
    stack = AttentionStack("self", [w], np.zeros((n, n), bool))
    return AttentionRun(tokens=toks, stacks={"self": stack}, model={"id": "long"},
                        text=" ".join(t.text for t in toks))


def test_clicking_a_label_selects_its_token_at_347_tokens(page, tmp_path):
    open_page(page, long_run(), tmp_path / "long.html")
    g = hooks(page, "a.geometry")
    step = max(1, math.ceil(12 / g["cs"]))
    size = max(7, min(12, math.floor(g["cs"] - 1)))
    assert step > 1 and size > 2 * g["cs"]  # a label is several rows tall
    q = step * (170 // step)
    for dy in (-0.35 * size, 0.35 * size):  # on the label's text, off its row's centre
        p = hooks(page, f"a.rowLabel({q})")
        page.keyboard.press("Escape")
        page.mouse.click(p["x"], p["y"] + dy)
        assert hooks(page, "a.state.sel") == {"q": q, "k": q}, dy
    k = step * (90 // step)
    p = hooks(page, f"a.colLabel({k})")
    page.keyboard.press("Escape")
    page.mouse.click(p["x"] + 0.35 * size, p["y"])
    assert hooks(page, "a.state.sel") == {"q": k, "k": k}
    assert f"w{k}" in page.locator(".am-sel").text_content()
    clean(page)


# --- (10) badges: next_token and a legend ---------------------------------------------------
def next_token_run(n: int = 9) -> AttentionRun:
    """A bidirectional run whose head 0 looks at the next token (the last row: at itself) and
    whose head 1 spreads out; [CLS] and [SEP] are special."""
    nxt = np.eye(n, k=1)
    nxt[-1, -1] = 1.0
    flat = np.full((n, n), 1.0 / n)
    w = np.stack([nxt, flat]).astype(np.float32)  # [head, query, key]
    words = ["[CLS]"] + [f"t{i}" for i in range(1, n - 1)] + ["[SEP]"]
    toks = [Token(text=t, raw=t, id=i, special=t.startswith("[")) for i, t in enumerate(words)]
    stack = AttentionStack("self", [w], np.zeros((n, n), bool))
    return AttentionRun(tokens=toks, stacks={"self": stack},
                        model={"id": "bidirectional", "causal": False}, text=" ".join(words[1:-1]))


def test_next_token_badge_legend_and_tooltip(page, tmp_path):
    open_page(page, next_token_run(), tmp_path / "next.html", view="heads")
    wait_js(page, f"document.querySelector('{ROOT}').dataset.view === 'heads'")
    badges = {t["head"]: t["badge"] for t in hooks(page, "a.thumbs")}
    assert badges[0] == "next 1.0"
    legend = page.locator(".am-legend")
    assert legend.is_visible()
    items = {e.get_attribute("data-badge"): e.text_content()
             for e in legend.locator(".am-legend-item").all()}
    assert {"self", "prev", "next", "first", "dup", "ind", "spec"} <= set(items)
    assert "token just after" in items["next"] and "special tokens" in items["spec"]
    assert "earlier copies" in items["dup"] and "induction" in items["ind"]
    # Hovering a thumbnail explains its badge; opening it takes the tooltip away.
    p = hooks(page, "a.thumb(0, 0)")
    page.mouse.move(p["x"], p["y"])
    tip = page.locator(".am-tip")
    tip.wait_for(state="visible")
    assert "next 1.0: attention to the token just after" in tip.text_content()
    n = draws(page)
    page.mouse.click(p["x"], p["y"])
    wait_draw(page, n)
    assert hooks(page, "a.state.view") == "heatmap"
    assert tip.is_hidden()
    assert not legend.is_visible()  # the legend goes with the thumbnails
    clean(page)


# --- (11) relation panel -----------------------------------------------------------------
def test_relation_rows_name_heads_and_mark_the_cells(page, tmp_path, gpt2_run):
    open_page(page, gpt2_run, tmp_path / "rel.html")
    got = hooks(page, "a.relate('was#1', 'cat')")
    out = page.locator(".am-rel-out")
    assert out.locator(".am-rel-head").text_content() == "headattention to"
    rows = out.locator(".am-rel-row")
    names = [rows.nth(i).locator(".am-k").text_content() for i in range(rows.count())]
    assert names == [f"L{r['layer']} H{r['head']}" for r in got["heads"][:rows.count()]]
    n = draws(page)
    rows.nth(1).click()
    wait_draw(page, n)
    best = got["heads"][1]
    st = hooks(page, "a.state")
    assert (st["layer"], st["head"], st["view"]) == (best["layer"], best["head"], "heatmap")
    src, dst = got["from_tokens"], got["to_tokens"]
    assert st["mark"] == {"q": [min(src), max(src) + 1], "k": [min(dst), max(dst) + 1]}
    g = hooks(page, "a.geometry")
    q, k = src[0], dst[0]
    edge = canvas_pixels(page, g["x0"] + k * g["cs"] + 1, g["y0"] + (q + 0.5) * g["cs"], 1, 1)
    assert tuple(edge[0, 0]) == pytest.approx(MARK, abs=3)
    page.keyboard.press("Escape")
    assert hooks(page, "a.state.mark") is None
    clean(page)


# --- (13) wheel and the keys-and-mouse help -----------------------------------------------
def test_wheel_scrolls_the_zoomed_matrix_and_ctrl_wheel_zooms(page, tmp_path):
    open_page(page, long_run(120), tmp_path / "wheel.html")
    page.click(".am-zoom-in")
    page.click(".am-zoom-in")
    st = hooks(page, "a.state")
    c = hooks(page, "a.cell(60, 60)")  # the middle: in view when zoomed
    page.mouse.move(c["x"], c["y"])
    page.mouse.wheel(0, 300)
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.q0 > {st['q0']}")
    assert hooks(page, "a.state.k0") == st["k0"]
    page.mouse.wheel(300, 0)
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.k0 > {st['k0']}")
    assert page.evaluate("document.scrollingElement.scrollTop") == 0  # the page stays put
    cs = hooks(page, "a.state.cs")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.cs > {cs}")
    clean(page)


def test_question_mark_opens_the_help_and_escape_closes_it(page, tmp_path, gpt2_run):
    open_page(page, gpt2_run, tmp_path / "help.html")
    help_box = page.locator(".am-help")
    assert help_box.is_hidden()
    page.focus(ROOT)
    page.keyboard.press("?")
    assert help_box.is_visible()
    text = help_box.text_content()
    assert "Ctrl / ⌘ + wheel" in text and "zoom about the pointer" in text
    assert "scroll the zoomed matrix" in text and "Esc" in text
    sel_before = hooks(page, "a.state.sel")
    page.keyboard.press("Escape")
    assert help_box.is_hidden() and hooks(page, "a.state.sel") == sel_before
    page.click(".am-help-btn")
    assert help_box.is_visible()
    page.click(".am-help-btn")
    assert help_box.is_hidden()
    clean(page)
