"""The standalone page in real headless Chromium, opened from file:// with the network blocked."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

import attnmap
from attnmap.tokens import visible
from attnmap.viewer import to_html

ROOT = ".attnmap"


def wait_js(page, cond: str, timeout_s: float = 15.0):
    """Poll a JS condition in the page. (Playwright's wait_for_function compiles its predicate
    with eval, which the standalone page's Content-Security-Policy rightly refuses.)"""
    t0 = time.monotonic()
    probe = f"(() => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }})()"
    while not page.evaluate(probe):
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {cond}")
        time.sleep(0.02)


def open_page(page, run, path, **options):
    to_html(run, path, **options)
    page.goto(path.as_uri())
    wait_js(page, f"document.querySelector('{ROOT}')?.dataset.draws >= 1")
    return page


def hooks(page, expr):
    return page.evaluate(f"(() => {{ const a = document.querySelector('{ROOT}').__attnmap; "
                         f"return {expr}; }})()")


def draws(page) -> int:
    return int(page.get_attribute(ROOT, "data-draws"))


def wait_draw(page, before: int):
    wait_js(page, f"document.querySelector('{ROOT}').dataset.draws > {before}")


def hover_cell(page, q, k):
    p = hooks(page, f"a.cell({q}, {k})")
    page.mouse.move(p["x"], p["y"])
    tip = page.locator(".am-tip")
    tip.wait_for(state="visible")
    return tip


def clean(page):
    assert page.errors == []
    assert page.blocked == []


@pytest.fixture
def gpt2_page(page, gpt2_run, tmp_path):
    return open_page(page, gpt2_run, tmp_path / "run.html")


def test_first_heatmap_is_drawn(gpt2_page, gpt2_run):
    page = gpt2_page
    state = hooks(page, "a.state")
    assert (state["stack"], state["layer"], state["head"], state["view"]) == ("self", 0, 0,
                                                                              "heatmap")
    # Causal: the first query sees only itself (attention 1, the darkest colour); the cell to
    # its right is masked and painted grey, unlike the white of an attention of 0.
    r, g, b, a = hooks(page, "a.pixel(0, 0)")
    assert a == 255 and b > r + 40 and r + g + b < 3 * 120
    masked = hooks(page, "a.pixel(0, 1)")
    assert masked[0] == masked[1] == masked[2] and 190 <= masked[0] <= 230
    n = len(gpt2_run.tokens)
    assert hooks(page, "a.header.stacks[0].shape") == [2, 2, n, n]
    clean(page)


def test_pick_layer_and_head_by_controls_and_keys(gpt2_page, gpt2_run):
    page = gpt2_page
    before = draws(page)
    page.select_option(".am-layer", "1")
    page.select_option(".am-head", "1")
    wait_draw(page, before + 1)
    assert (hooks(page, "a.state.layer"), hooks(page, "a.state.head")) == (1, 1)
    tip = hover_cell(page, 6, 3)
    want = gpt2_run.head(1, 1)[6, 3]
    assert abs(float(tip.get_attribute("data-value")) - want) <= 1 / 255
    # Keyboard: j/k move through layers, h/l (and arrows) through heads, wrapping around.
    page.click(".am-canvas", position={"x": 5, "y": 5})
    page.keyboard.press("j")
    page.keyboard.press("l")
    assert (hooks(page, "a.state.layer"), hooks(page, "a.state.head")) == (0, 0)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowLeft")
    assert (hooks(page, "a.state.layer"), hooks(page, "a.state.head")) == (1, 1)
    assert page.input_value(".am-layer") == "1" and page.input_value(".am-head") == "1"
    clean(page)


def test_grids_open_a_head(gpt2_page):
    page = gpt2_page
    page.select_option(".am-view", "heads")
    wait_js(page, f"document.querySelector('{ROOT}').dataset.view === 'heads'")
    p = hooks(page, "a.thumb(0, 1)")
    page.mouse.click(p["x"], p["y"])
    assert hooks(page, "a.state.view") == "heatmap" and hooks(page, "a.state.head") == 1
    page.select_option(".am-view", "layers")
    wait_js(page, f"document.querySelector('{ROOT}').dataset.view === 'layers'")
    p = hooks(page, "a.thumb(1, 0)")
    page.mouse.click(p["x"], p["y"])
    st = hooks(page, "a.state")
    assert (st["view"], st["layer"], st["head"]) == ("heatmap", 1, 0)
    clean(page)


def test_hover_shows_tokens_positions_and_value(gpt2_page, gpt2_run):
    page = gpt2_page
    toks = [t.text for t in gpt2_run.tokens]
    tip = hover_cell(page, 5, 2)
    text = tip.text_content()
    assert f"query 5 {toks[5]}" in text and f"key 2 {toks[2]}" in text
    want = gpt2_run.head(0, 0)[5, 2]
    assert abs(float(tip.get_attribute("data-value")) - want) <= gpt2_run.head(0, 0)[5].max() / 255
    assert f"attention {float(tip.get_attribute('data-value')):.4f}" in text
    tip = hover_cell(page, 2, 5)
    assert tip.get_attribute("data-value") == "masked" and "masked" in tip.text_content()
    clean(page)


def test_mean_of_heads(gpt2_page, gpt2_run):
    page = gpt2_page
    page.select_option(".am-head", "mean")
    tip = hover_cell(page, 7, 1)
    want = gpt2_run.layer(0).mean(axis=0)[7, 1]  # [head, query, key] → [query, key]
    assert abs(float(tip.get_attribute("data-value")) - want) <= 2 / 255
    clean(page)


def test_click_token_highlights_row_and_column(gpt2_page, gpt2_run):
    page = gpt2_page
    toks = [t.text for t in gpt2_run.tokens]
    outside, in_row, in_col = hooks(page, "[a.pixel(9, 1), a.pixel(4, 1), a.pixel(9, 4)]")
    p = hooks(page, "a.rowLabel(4)")
    page.mouse.click(p["x"], p["y"])
    assert hooks(page, "a.state.sel") == {"q": 4, "k": 4}
    after_out, after_row, after_col = hooks(page, "[a.pixel(9, 1), a.pixel(4, 1), a.pixel(9, 4)]")
    assert after_row == in_row and after_col == in_col  # the row and column keep their colour
    assert sum(after_out[:3]) > sum(outside[:3])  # the rest fades
    assert page.locator(".am-sel").text_content() == f"query 4 {toks[4]}"
    lists = page.locator(".am-list")
    assert lists.nth(0).locator(".am-k").text_content() == "attends most to"
    assert lists.nth(1).locator(".am-k").text_content() == "attended most by"
    row = gpt2_run.head(0, 0)[4]  # [key]
    top = lists.nth(0).locator(".am-row").first
    assert top.locator(".am-tok").text_content() == toks[int(np.argmax(row))]
    assert abs(float(top.locator(".am-num").text_content()) - row.max()) < 1e-3
    page.keyboard.press("Escape")
    assert hooks(page, "a.state.sel") is None
    clean(page)


def test_zoom_pan_and_minimap(page, tmp_path, gpt2_dir):
    text = " ".join(["The cat that sat on the mat was black."] * 5)
    run = attnmap.capture(text, model=gpt2_dir, truncate=True)
    open_page(page, run, tmp_path / "long.html")
    fit = hooks(page, "a.state.cs")
    assert fit is None
    page.click(".am-zoom-in")
    page.click(".am-zoom-in")
    st = hooks(page, "a.state")
    assert st["cs"] > 0 and st["q0"] >= 0
    box = page.locator(".am-mini").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2)
    moved = hooks(page, "a.state")
    assert moved["q0"] > st["q0"] and moved["k0"] > st["k0"]  # jumped to the bottom-right
    page.click(".am-fit")
    assert hooks(page, "a.state.cs") is None
    clean(page)


def test_colour_scales_change_the_picture(gpt2_page):
    page = gpt2_page
    q, k = 9, 3
    head_scale = hooks(page, f"a.pixel({q}, {k})")
    page.select_option(".am-scale", "log")
    log_scale = hooks(page, f"a.pixel({q}, {k})")
    assert sum(log_scale[:3]) < sum(head_scale[:3])  # small values show darker on a log scale
    page.select_option(".am-scale", "head")
    page.check(".am-ignore")
    # Without the first token the head's max is smaller, so every other cell gets darker.
    assert sum(hooks(page, f"a.pixel({q}, {k})")[:3]) <= sum(head_scale[:3])
    clean(page)


def test_png_download(gpt2_page):
    page = gpt2_page
    with page.expect_download() as info:
        page.click(".am-png")
    dl = info.value
    assert dl.suggested_filename == "attnmap-self-L0-H0-heatmap.png"
    data = open(dl.path(), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == tuple(hooks(page, "[a.canvasSize.w, a.canvasSize.h]"))
    clean(page)


def hostile_strings(model_dir) -> list[str]:
    """The markup-like tokens that the fixture added to this tokenizer's vocabulary."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    special = set(tok.all_special_tokens)
    return [t for t in tok.get_added_vocab() if t not in special]


def test_hostile_tokens_are_text_and_run_nothing(page, tmp_path, hostile_gpt2_dir):
    HOSTILE = hostile_strings(hostile_gpt2_dir)
    assert "</script><script>window.__pwned=1</script>" in HOSTILE and len(HOSTILE) >= 5
    text = "The cat " + " ".join(HOSTILE) + " sat."
    run = attnmap.capture(text, model=hostile_gpt2_dir)
    toks = [t.text for t in run.tokens]
    shown = [visible(bad) for bad in HOSTILE]  # labels show whitespace as ␣ and U+2028 by name
    for bad in shown:
        assert bad in toks, f"tokenizer did not keep {bad!r} whole"
    path = tmp_path / "hostile.html"
    source = to_html(run, path)
    for bad in HOSTILE + shown:
        assert bad not in source  # token text only travels inside the encoded payload
    assert source.lower().count("</script") == 4  # only the page's own four script elements
    open_page(page, run, path)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img").count() == 0
    for i, t in enumerate(toks):
        p = hooks(page, f"a.rowLabel({i})")
        page.mouse.move(p["x"], p["y"])
        tip = page.locator(".am-tip")
        tip.wait_for(state="visible")
        assert tip.locator(".am-tok").first.text_content() == t
    label = hooks(page, f"a.rowLabel({toks.index(HOSTILE[0])})")
    page.mouse.click(label["x"], label["y"])
    assert HOSTILE[0] in page.locator(".am-info").text_content()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img").count() == 0
    clean(page)


def test_initial_view_options(page, tmp_path, gpt2_run):
    open_page(page, gpt2_run, tmp_path / "opts.html", layer=-1, head="max", scale="unit",
              ignore_first=True)
    st = hooks(page, "a.state")
    assert (st["layer"], st["head"], st["scale"], st["ignoreFirst"]) == (1, "max", "unit", True)
    tip = hover_cell(page, 3, 1)
    want = np.max(gpt2_run.layer(1), axis=0)[3, 1]
    assert abs(float(tip.get_attribute("data-value")) - want) <= 2 / 255
    clean(page)
