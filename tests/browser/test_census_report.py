"""The corpus census report (`attnmap html --census`) in Chromium: the layers × heads grid,
the top heads of the chosen score as the summary ranks them, a head's documents, and an
embedded attention page that opens and draws, offline and without a script error."""

from __future__ import annotations

import json

import pytest

from .._cli import run_cli
from ..integration.test_corpus import clean, handmade, jsonl, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def report(clean, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "census.html"
    r = run_cli("html", "--census", clean, "-o", out, "--embed", "2")
    assert "2 attention pages" in r.stderr
    assert r.returncode == 0, r.stderr
    return out, json.loads((clean / "summary.json").read_text())


def _ranked(summary, score):
    """Heads by the corpus mean of `score`, best first, as 'L{layer} H{head}'."""
    heads = [h for h in summary["heads"] if h["scores"][score] is not None]
    heads.sort(key=lambda h: -h["scores"][score]["mean"])
    return [f"L{h['layer']} H{h['head']}" for h in heads]


def test_report_ranks_heads_as_the_summary_does(page, report):
    path, summary = report
    page.goto(path.as_uri())
    page.wait_for_selector("#top li")
    n_cells = page.eval_on_selector_all("#grid td.cell[data-head]", "tds => tds.length")
    assert n_cells == len(summary["heads"])
    for score in ("previous_token", "first_token"):
        page.select_option("#score", score)
        top = page.eval_on_selector_all("#top li", "lis => lis.map(li => li.textContent)")
        want = _ranked(summary, score)
        assert [" ".join(t.split()[1:3]) for t in top] == want[: len(top)]
        best = summary["heads"][[f"L{h['layer']} H{h['head']}" for h in summary["heads"]]
                                .index(want[0])]
        assert f"{best['scores'][score]['mean']:.3f}" in top[0]
    assert page.errors == [] and page.blocked == []


def test_a_head_lists_its_documents_and_opens_an_attention_page(page, report):
    path, summary = report
    page.goto(path.as_uri())
    page.wait_for_selector("#top li")
    page.click("#grid td.cell[data-head='1']")
    h = summary["heads"][1]
    assert f"L{h['layer']} H{h['head']}" in page.text_content("#head-title")
    bars = page.eval_on_selector_all("#hist > div", "ds => ds.length")
    assert bars > 0
    assert page.eval_on_selector_all("#high li", "lis => lis.length") > 0
    # the report embeds the best document of each score's top head: choose that head, and
    # its document's button opens the page, which draws its heatmap
    for score in page.eval_on_selector_all("#score option", "os => os.map(o => o.value)"):
        page.select_option("#score", score)
        page.click("#top li >> nth=0")
        if page.locator("#high li button").count():
            break
    else:
        pytest.fail("no top head lists a document with an embedded page")
    page.click("#high li button >> nth=0")
    frame = page.frame_locator("#page iframe")
    frame.locator(".attnmap canvas").first.wait_for(timeout=30000)
    assert page.errors == [] and page.blocked == []
