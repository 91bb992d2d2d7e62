"""The diff page (attnmap.viewer.diff_html) in real Chromium: A, B and A − B for any head,
computed in the page from two aligned payloads, and the head grid coloured by change."""

from __future__ import annotations

import numpy as np
import pytest

import attnmap
from attnmap.diff import compare
from attnmap.viewer import diff_html

from .test_viewer import ROOT, clean, hooks, wait_js

A = "The keys to the cabinet are on the table."
B = "The key to the cabinets is on the table."


@pytest.fixture(scope="module")
def diff(gpt2_dir):
    return compare(attnmap.capture(A, model=gpt2_dir), attnmap.capture(B, model=gpt2_dir))


def open_diff(page, d, path, **options):
    diff_html(d, path, **options)
    page.goto(path.as_uri())
    wait_js(page, f"document.querySelector('{ROOT}')?.dataset.draws >= 1")
    return page


def test_a_b_and_difference_match_python(page, tmp_path, diff):
    open_diff(page, diff, tmp_path / "d.html")
    st = hooks(page, "a.state")
    top = diff.ranking[0]
    assert (st["view"], st["layer"], st["head"]) == ("diff", top["layer"], top["head"])
    for layer, head in [(top["layer"], top["head"]), (0, 1)]:
        page.select_option(".am-layer", str(layer))
        page.select_option(".am-head", str(head))
        wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.head === {head}")
        got = hooks(page, "a.diffHead")
        a, b, delta, masked = diff.matrices(layer, head)
        n = len(diff.ia)
        assert (got["q"], got["k"]) == (n, n)
        ga = np.array([np.nan if v is None else v for v in got["a"]]).reshape(n, n)
        gd = np.array([np.nan if v is None else v for v in got["d"]]).reshape(n, n)
        np.testing.assert_array_equal(np.isnan(gd), masked)
        tol = (a.max(axis=1, keepdims=True) + b.max(axis=1, keepdims=True)) / 256 + 1e-6
        assert np.all(np.abs(np.where(masked, 0, gd - delta)) <= tol)
        assert np.all(np.abs(np.where(masked, 0, ga - a)) <= a.max(axis=1, keepdims=True) / 256
                      + 1e-6)
        # Symmetric limits: the largest |A − B| over the cells either run can see.
        assert got["lim"] == pytest.approx(np.abs(np.where(masked, 0, delta)).max(), abs=2 / 256)
    clean(page)


def test_difference_uses_a_diverging_scale(page, tmp_path, diff):
    top = diff.ranking[0]
    open_diff(page, diff, tmp_path / "d.html")
    got = hooks(page, "a.diffHead")
    n = got["q"]
    d = np.array([np.nan if v is None else v for v in got["d"]]).reshape(n, n)
    q, k = np.unravel_index(np.nanargmax(d), d.shape)  # most positive: red
    r, g, b, _ = hooks(page, f"a.diffPixel(2, {q}, {k})")
    assert r > b + 60
    # Swapping A and B flips the sign; with symmetric limits that cell turns as blue as it was red.
    diff_html(compare(diff.b, diff.a), tmp_path / "swapped.html", layer=top["layer"],
              head=top["head"])
    page.goto((tmp_path / "swapped.html").as_uri())
    wait_js(page, f"document.querySelector('{ROOT}')?.dataset.draws >= 1")
    assert hooks(page, "a.diffHead")["lim"] == pytest.approx(got["lim"], abs=1e-6)
    r2, g2, b2, _ = hooks(page, f"a.diffPixel(2, {q}, {k})")
    assert b2 > r2 + 60 and abs((b2 - r2) - (r - b)) <= 40
    # Hover shows the three values as text.
    p = hooks(page, f"a.diffCell(2, {q}, {k})")
    page.mouse.move(p["x"], p["y"])
    tip = page.locator(".am-tip")
    tip.wait_for(state="visible")
    a, b, delta, _ = diff.matrices(top["layer"], top["head"])  # the page shows B − A now
    assert "A − B -" in tip.text_content() and "B " in tip.text_content()
    assert float(tip.get_attribute("data-value")) == pytest.approx(-delta[q, k], abs=2 / 256)
    clean(page)


def test_change_grid_is_coloured_by_the_ranking_and_opens_heads(page, tmp_path, diff):
    open_diff(page, diff, tmp_path / "d.html", view="change", metric="mean_abs")
    cells = hooks(page, "a.changeCells")
    by = {(r["layer"], r["head"]): r for r in diff.ranking}
    assert len(cells) == len(by)
    for c in cells:
        assert c["value"] == pytest.approx(by[c["layer"], c["head"]]["mean_abs"])
    most = max(cells, key=lambda c: c["value"])
    least = min(cells, key=lambda c: c["value"])
    assert sum(most["rgb"]) < sum(least["rgb"])  # darker = more change
    page.select_option(".am-metric", "js")
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.metric === 'js'")
    for c in hooks(page, "a.changeCells"):
        assert c["value"] == pytest.approx(by[c["layer"], c["head"]]["js"])
    p = hooks(page, "a.thumb(1, 0)")
    page.mouse.click(p["x"], p["y"])
    st = hooks(page, "a.state")
    assert (st["view"], st["layer"], st["head"]) == ("diff", 1, 0)
    wait_js(page, f"document.querySelector('{ROOT}').dataset.view === 'diff'")
    clean(page)


def test_diff_of_a_run_with_itself_is_zero(page, tmp_path, gpt2_run):
    d = compare(gpt2_run, gpt2_run)
    open_diff(page, d, tmp_path / "same.html")
    got = hooks(page, "a.diffHead")
    assert all(v is None or v == 0 for v in got["d"])
    r, g, b, _ = hooks(page, "a.diffPixel(2, 3, 1)")
    assert min(r, g, b) >= 245  # zero is white on the diverging scale
    clean(page)


# --- substitutions, labels that fit, the change grid's numbers -------------------------------
KEYS_A, KEYS_B = "The keys to the cabinet are", "The key to the cabinets is"
# 30 tokens with MiniLM's [CLS] and [SEP]
LONG_A = ("The keys to the old cabinet in the hall are on the small table by the door, "
          "and the lamp near the big window is off now")
LONG_B = ("The key to the old cabinets in the hall is on the small table by the door, "
          "and the lamp near the big window is off now")


@pytest.fixture(scope="module")
def keys_diff():
    return compare(attnmap.capture(KEYS_A), attnmap.capture(KEYS_B))  # the bundled MiniLM


def at_1280(page):
    page.set_viewport_size({"width": 1280, "height": 800})
    return page


def label_ink(page, x0: float, x1: float, y: float) -> list[list[int]]:
    """Canvas RGB along the row y (CSS px) from x0 to x1, for the diff viewer's canvas."""
    return page.evaluate(
        """([x0, x1, y]) => {
        const c = document.querySelector('.attnmap .am-canvas'), r = window.devicePixelRatio || 1;
        const d = c.getContext('2d').getImageData(Math.floor(x0 * r), Math.floor(y * r),
                                                   Math.ceil((x1 - x0) * r), 1).data;
        const out = [];
        for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
        return out; }""", [x0, x1, y])


def orange(rgb) -> bool:
    r, g, b = rgb
    return r > 150 and r > g + 50 and r > b + 90


def test_substituted_tokens_are_labelled_side_by_side(page, tmp_path, keys_diff):
    open_diff(at_1280(page), keys_diff, tmp_path / "keys.html")
    g = hooks(page, "a.diffGeometry")
    assert g["labels"] == ["[CLS]", "the", "keys→key", "to", "the", "cabinet→cabinets",
                           "are→is", "[SEP]"]
    assert g["changed"] == keys_diff.changed.tolist()
    assert g["labelled"] == list(range(8))
    # The substituted rows' labels are drawn in orange, the equal ones are not.
    for q in range(8):
        y = g["y0s"][0] + (q + 0.5) * g["cs"]
        ink = label_ink(page, g["x0s"][0] - 100, g["x0s"][0] - 2, y)
        assert any(orange(p) for p in ink) == g["changed"][q], q
    # The hover names the pair.
    p = hooks(page, "a.diffCell(2, 2, 5)")
    page.mouse.move(p["x"], p["y"])
    tip = page.locator(".am-tip")
    tip.wait_for(state="visible")
    assert "keys→key" in tip.text_content() and "cabinet→cabinets" in tip.text_content()
    clean(page)


def test_every_token_labelled_at_1280_for_30_tokens(page, tmp_path):
    d = compare(attnmap.capture(LONG_A), attnmap.capture(LONG_B))
    n = len(d.ia)
    assert n == 30 and d.changed.sum() == 3
    open_diff(at_1280(page), d, tmp_path / "long.html")
    g = hooks(page, "a.diffGeometry")
    print("diff layout at 1280 px:", {k: g[k] for k in ("cols", "cs", "pw", "canvasWidth")})
    assert g["labelled"] == list(range(n))  # rows and columns: every token
    assert g["cs"] >= 11 and g["font"] >= 7
    assert sum("→" in t for t in g["labels"]) == 3
    # The panels stay on the canvas, and the canvas in the window.
    assert max(g["x0s"]) + g["pw"] <= g["canvasWidth"]
    assert g["canvasLeft"] + g["canvasWidth"] <= 1280
    # Hit tests follow the panels wherever they were put.
    last = hooks(page, f"a.diffCell(2, {n - 1}, {n - 1})")
    page.mouse.wheel(0, last["y"] - 400)  # the A − B panel may sit below the window
    page.wait_for_timeout(100)
    last = hooks(page, f"a.diffCell(2, {n - 1}, {n - 1})")
    assert 0 < last["y"] < 800
    page.mouse.move(last["x"], last["y"])
    page.locator(".am-tip").wait_for(state="visible")
    assert float(page.get_attribute(".am-tip", "data-value")) == pytest.approx(
        hooks(page, "a.diffHead")["d"][n * n - 1], abs=1e-4)
    clean(page)


def test_change_grid_prints_three_significant_digits(page, tmp_path, keys_diff):
    open_diff(at_1280(page), keys_diff, tmp_path / "change.html", view="change",
              metric="mean_abs")
    cells = hooks(page, "a.changeCells")
    assert len(cells) == len(keys_diff.ranking)
    small = 0
    for c in cells:
        assert c["label"] is not None
        v, shown = c["value"], float(c["label"])
        assert shown == pytest.approx(v, rel=5e-3, abs=1e-12), c
        small += v < 0.01
    assert small  # values that two decimals would print as .00 or .01
    clean(page)


@pytest.fixture(scope="module")
def bert_server(bert_dir):
    from _server import start

    server = start("--model", str(bert_dir))
    yield server
    server.stop()


APP_TEXT = ("The cat that sat on the mat was black and the dog that ran on the rug was "
            "brown and the bird")


def test_app_diff_panels_label_every_token_and_the_masked_one(page, bert_server, bert_dir):
    from transformers import AutoTokenizer

    from .test_app_browser import open_app, run_text, wait_drawn

    mask = AutoTokenizer.from_pretrained(bert_dir).mask_token

    at_1280(page)
    open_app(page, bert_server)
    a = run_text(page, APP_TEXT)
    n = page.eval_on_selector_all("#tokens span", "els => els.length")
    assert 24 <= n <= 30
    # The first word: the tiny test tokenizer reads " [MASK]" mid-text as two tokens (a
    # space, then the mask), which no one-for-one pairing can keep in one slot.
    texts = page.eval_on_selector_all("#tokens span", "els => els.map(e => e.textContent)")
    pos = texts.index("The")
    page.click(f"#tokens span[data-pos='{pos}']")
    page.click("#act-mask")
    page.wait_for_function(
        "(a) => document.body.dataset.view === 'diff' && "
        "(document.body.dataset.diff || '').startsWith(a + ' ')", arg=a)
    wait_drawn(page)
    g = page.evaluate("() => document.querySelector('#viewer .attnmap').__attnmap.diffGeometry")
    assert len(g["labels"]) == n  # the masked token keeps its slot
    assert g["labelled"] == list(range(n)) and g["cs"] >= 11
    assert [i for i, c in enumerate(g["changed"]) if c] == [pos]
    assert g["labels"][pos] == f"The→{mask}"
    assert g["canvasLeft"] + g["canvasWidth"] <= 1280
    assert f"{n} aligned tokens, 1 substituted" in page.text_content("#diff-title")
    assert page.errors == []
