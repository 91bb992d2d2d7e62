"""The viewer's analysis features in real Chromium: census badges, sort and filter by score,
the relation panel (checked against attnmap.relate), and the predictions column."""

from __future__ import annotations

import pytest

import attnmap
from attnmap.analysis import SCORE_NAMES, head_scores
from tests import _models

from .test_viewer import ROOT, clean, hooks, open_page, wait_js

ABBR = {"self": "self", "previous_token": "prev", "first_token": "first",
        "duplicate_token": "dup", "induction": "ind", "special": "spec"}
TEXT = "The cat that sat on the mat was black. The mat was red."


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    d = _models.build_gpt2(tmp_path_factory.mktemp("m") / "gpt2x4", layers=2, heads=4)
    return attnmap.capture(TEXT, model=d, predictions=True, top_k=3)


def fmt(v: float) -> str:
    return f"{v:.2f}".replace("0.", ".", 1) if abs(v) < 1 else f"{v:.1f}"


def top_badge(scores: dict) -> str:
    name = max((n for n in ABBR if scores[n] is not None), key=lambda n: scores[n])
    return f"{ABBR[name]} {fmt(scores[name])}"


def show_view(page, view):
    page.select_option(".am-view", view)
    wait_js(page, f"document.querySelector('{ROOT}').dataset.view === '{view}'")


def test_header_scores_are_the_census(run4, page, tmp_path):
    open_page(page, run4, tmp_path / "r.html")
    sc = hooks(page, "a.header.stacks[0].scores")
    rows = head_scores(run4)
    assert sc["names"] == list(SCORE_NAMES)
    for r, vals in zip(rows, sc["values"], strict=True):
        for n, v in zip(SCORE_NAMES, vals, strict=True):
            assert v == pytest.approx(r["scores"][n]) if r["scores"][n] is not None else v is None
    clean(page)


def test_badges_carry_each_heads_top_score(run4, page, tmp_path):
    open_page(page, run4, tmp_path / "r.html")
    rows = {(r["layer"], r["head"]): r["scores"] for r in head_scores(run4)}
    show_view(page, "heads")
    thumbs = hooks(page, "a.thumbs")
    assert [(t["layer"], t["head"]) for t in thumbs] == [(0, h) for h in range(4)]
    assert [t["badge"] for t in thumbs] == [top_badge(rows[0, h]) for h in range(4)]
    show_view(page, "layers")
    thumbs = hooks(page, "a.thumbs")
    assert len(thumbs) == 8
    assert all(t["badge"] == top_badge(rows[t["layer"], t["head"]]) for t in thumbs)
    clean(page)


def test_sort_and_filter_heads_by_a_score(run4, page, tmp_path):
    open_page(page, run4, tmp_path / "r.html", view="heads", layer=1)
    rows = [r for r in head_scores(run4) if r["layer"] == 1]
    prev = {r["head"]: r["scores"]["previous_token"] for r in rows}
    page.select_option(".am-score", "previous_token")
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.state.score === 'previous_token'")
    thumbs = hooks(page, "a.thumbs")
    want = sorted(prev, key=lambda h: (-prev[h], h))
    assert [t["head"] for t in thumbs] == want
    assert [t["badge"] for t in thumbs] == [f"prev {fmt(prev[h])}" for h in want]
    # A threshold between the 2nd and 3rd best keeps exactly the best two.
    cut = (prev[want[1]] + prev[want[2]]) / 2
    assert prev[want[1]] > prev[want[2]]
    page.fill(".am-min", f"{cut:.6f}")
    wait_js(page, f"document.querySelector('{ROOT}').__attnmap.thumbs.length === 2")
    assert [t["head"] for t in hooks(page, "a.thumbs")] == want[:2]
    # The overview dims the heads that fail the filter instead of moving them.
    show_view(page, "layers")
    passed = {(t["layer"], t["head"]) for t in hooks(page, "a.thumbs") if t["pass"]}
    allrows = head_scores(run4)
    assert passed == {(r["layer"], r["head"]) for r in allrows
                      if r["scores"]["previous_token"] >= float(f"{cut:.6f}")}
    clean(page)


def test_relation_panel_ranks_heads_like_relate(run4, page, tmp_path):
    open_page(page, run4, tmp_path / "r.html")
    words = hooks(page, "a.words")
    assert words[:4] == ["The#1", "cat", "that", "sat"] and "mat#2" in words
    got = page.evaluate(f"document.querySelector('{ROOT}').__attnmap.relate('was#1', 'cat', "
                        "'mat#1')")
    want = attnmap.relate(run4, "was", "cat", "mat")
    assert got["ranked_by"] == want["ranked_by"] == "to - vs"
    by_head = {(r["layer"], r["head"]): r for r in want["heads"]}
    # Values agree within the payload's quantisation (1/256 of a row max per cell, summed over
    # at most two key tokens); the order agrees wherever Python's gaps exceed that error.
    tol = 2 * 2 / 256
    for r in got["heads"]:
        ref = by_head[r["layer"], r["head"]]
        assert r["to"] == pytest.approx(ref["to"], abs=tol)
        assert r["vs"] == pytest.approx(ref["vs"], abs=tol)
    diffs = [by_head[r["layer"], r["head"]]["diff"] for r in got["heads"]]
    for i in range(len(diffs)):
        for j in range(i + 1, len(diffs)):
            assert diffs[i] > diffs[j] - 2 * tol
    if all(abs(a - b) > 2 * tol for a, b in zip(diffs, diffs[1:])):
        assert [(r["layer"], r["head"]) for r in got["heads"]] == \
            [(r["layer"], r["head"]) for r in want["heads"]]
    # The panel lists the best heads; clicking one opens it.
    rows = page.locator(".am-rel-row")
    assert rows.count() == min(10, len(want["heads"]))
    best = got["heads"][0]
    rows.first.click()
    st = hooks(page, "a.state")
    assert (st["view"], st["layer"], st["head"]) == ("heatmap", best["layer"], best["head"])
    clean(page)


# --- predictions column ----------------------------------------------------------------------
def short(s: str, n: int = 10) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def test_predictions_column_from_the_cli(page, tmp_path, gpt2_dir):
    from _cli import run_cli

    out = tmp_path / "pred.html"
    r = run_cli("html", TEXT, "--model", gpt2_dir, "--predictions", "--top-k", "3", "-o", out,
                "--quiet")
    assert r.returncode == 0, r.stderr
    run = attnmap.capture(TEXT, model=gpt2_dir, predictions=True, top_k=3)
    preds = run.predictions
    page.goto(out.as_uri())
    wait_js(page, f"document.querySelector('{ROOT}')?.dataset.draws >= 1")
    rows = hooks(page, "a.predRows")
    assert [r["q"] for r in rows] == list(range(len(run.tokens)))
    for row, p in zip(rows, preds, strict=True):
        top = p["top"][0]
        assert row["text"] == f"{short(top['token'])} {fmt(top['p'])}"
        assert row["miss"] == (p["next"] is not None and p["next"]["rank"] != 1)
    assert any(r["miss"] for r in rows)  # a random tiny model misses somewhere
    # Clicking a row's prediction shows its top-k as text, and the token that came next.
    q = next(r["q"] for r in rows if r["miss"])
    at = hooks(page, f"a.pred({q})")
    page.mouse.click(at["x"], at["y"])
    assert hooks(page, "a.state.sel") == {"q": q, "k": q}
    items = page.locator(".am-pred-row .am-tok").all_text_contents()
    assert items == [t["token"] for t in preds[q]["top"]]
    nxt = page.locator(".am-pred-next")
    assert "am-pred-miss" in nxt.get_attribute("class")
    assert preds[q]["next"]["token"] in nxt.text_content()
    assert f"rank {preds[q]['next']['rank']}" in nxt.text_content()
    # The row label opens the same list.
    page.keyboard.press("Escape")
    lab = hooks(page, "a.rowLabel(0)")
    page.mouse.click(lab["x"], lab["y"])
    assert page.locator(".am-pred-row .am-tok").all_text_contents() == \
        [t["token"] for t in preds[0]["top"]]
    clean(page)


def test_no_predictions_no_column(gpt2_run, page, tmp_path):
    open_page(page, gpt2_run, tmp_path / "r.html")
    assert hooks(page, "a.predRows") == []
    assert hooks(page, "a.header.predictions") is None
    clean(page)


def test_hostile_prediction_tokens_are_text(page, tmp_path, hostile_gpt2_dir):
    from .test_viewer import hostile_strings

    bad = hostile_strings(hostile_gpt2_dir)
    run = attnmap.capture("The cat " + " ".join(bad) + " sat.", model=hostile_gpt2_dir,
                          predictions=True, top_k=len(bad))
    # Whatever a random model predicts, put the markup-like strings in the top-k of row 1.
    run.extra["predictions"][1]["top"] = [{"token": b, "p": 0.1} for b in bad]
    run.extra["predictions"][1]["next"]["token"] = bad[0]
    open_page(page, run, tmp_path / "h.html")
    at = hooks(page, "a.pred(1)")
    page.mouse.click(at["x"], at["y"])
    assert page.locator(".am-pred-row .am-tok").all_text_contents() == bad
    assert bad[0] in page.locator(".am-pred-next").text_content()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator(".attnmap img").count() == 0
    clean(page)
