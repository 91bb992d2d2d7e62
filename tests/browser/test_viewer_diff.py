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
