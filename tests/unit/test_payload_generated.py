"""Generated runs in the payload header: which tokens the model wrote, the boundary, the census
over the generated rows, and the viewer options that open them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnmap import AttnmapError
from attnmap.analysis import SCORE_NAMES, head_scores
from attnmap.viewer import payload as P
from attnmap.viewer.html import check_options

from .test_payload import causal_run, seq2seq_run


def generated_run(n=9, prompt=6):
    """A causal run whose tokens from `prompt` on were written by the model, with the
    predictions attnmap.generate records (the chosen token's p, rank and entropy)."""
    run = causal_run(n=n)
    toks = [dataclasses.replace(t, generated=i >= prompt) for i, t in enumerate(run.tokens)]
    run = dataclasses.replace(run, tokens=toks)
    preds = []
    for i, t in enumerate(toks):
        nxt = None if i + 1 >= n else {"token": toks[i + 1].text, "p": 0.5, "rank": 1,
                                        "surprisal": 1.0}
        preds.append({"position": i, "token": t.text, "next": nxt, "entropy": 1.5,
                      "top": [{"token": toks[i + 1].text if i + 1 < n else "x", "p": 0.5},
                              {"token": "</script>", "p": 0.25}]})
    run.extra["predictions"], run.extra["predictions_kind"] = preds, "generate"
    return run


def test_generated_tokens_and_boundary_travel():
    run = generated_run(n=9, prompt=6)
    head = P.decode(P.encode(run))["header"]
    (s,) = head["stacks"]
    flags = [False] * 6 + [True] * 3
    assert s["query_generated"] == s["key_generated"] == flags
    assert head["generation"] == {"side": "input", "boundary": 6, "count": 3,
                                  "positions": [6, 7, 8]}
    # Per-step predictions travel as recorded (entropy included), on the self stack.
    assert head["predictions"] == run.extra["predictions"]
    assert head["predictions_kind"] == "generate" and head["predictions_stacks"] == ["self"]


def test_plain_runs_carry_no_generation_fields():
    head = P.header(causal_run(n=6))
    assert "generation" not in head
    (s,) = head["stacks"]
    assert not {"query_generated", "key_generated", "scores_generated"} & set(s)


def test_census_over_the_generated_rows():
    run = generated_run(n=9, prompt=6)
    (s,) = P.header(run)["stacks"]
    want = head_scores(run, rows=[6, 7, 8])
    assert s["scores_generated"]["names"] == list(SCORE_NAMES)
    assert s["scores_generated"]["values"] == [[r["scores"][n] for n in SCORE_NAMES]
                                               for r in want]
    assert s["scores_generated"]["values"] != s["scores"]["values"]
    # "self" is the mean of the diagonal over those rows only.
    for r in want[:4]:
        a = run.layer(r["layer"])[r["head"]]  # [query, key]
        assert r["scores"]["self"] == pytest.approx(float(np.mean(a[[6, 7, 8], [6, 7, 8]])))
        assert r["scores"]["first_token"] == pytest.approx(float(np.mean(a[6:9, 0])))


def test_head_scores_rows_default_is_every_row_and_bad_rows_are_one_line():
    run = causal_run(n=7)
    assert head_scores(run, rows=range(7)) == head_scores(run)
    with pytest.raises(AttnmapError, match=r"rows must be query positions in 0\.\.6"):
        head_scores(run, rows=[7])


def test_encoder_decoder_generation_is_on_the_target_side():
    run = seq2seq_run(n=6, m=4)
    tt = [dataclasses.replace(t, generated=i >= 1) for i, t in enumerate(run.target_tokens)]
    run = dataclasses.replace(run, target_tokens=tt)
    head = P.header(run)
    by = {s["name"]: s for s in head["stacks"]}
    assert head["generation"] == {"side": "target", "boundary": 1, "count": 3,
                                  "positions": [1, 2, 3]}
    flags = [False] + [True] * 3
    assert by["decoder"]["query_generated"] == by["cross"]["query_generated"] == flags
    assert "key_generated" not in by["cross"] and "query_generated" not in by["encoder"]
    assert by["cross"]["scores"] is None and "scores_generated" in by["decoder"]


def test_options_generated_view_and_step():
    run = generated_run(n=9, prompt=6)
    assert check_options(run, {"view": "generated", "step": 2}) == {"view": "generated",
                                                                     "step": 2}
    assert check_options(run, {"step": 0}) == {"step": 0}
    assert check_options(run, {"step": np.int64(3)}) == {"step": 3}
    for bad in (4, -1, 1.5, True, "2"):
        with pytest.raises(AttnmapError, match=r"step must be a whole number in 0\.\.3"):
            check_options(run, {"step": bad})
    plain = causal_run(n=6)
    with pytest.raises(AttnmapError, match="view='generated' needs a run with generated tokens"):
        check_options(plain, {"view": "generated"})
    with pytest.raises(AttnmapError, match="step needs a run with generated tokens"):
        check_options(plain, {"step": 1})
    with pytest.raises(AttnmapError, match="view must be 'heatmap', 'heads', 'layers', "
                                           "'generated' "):
        check_options(plain, {"view": "grid"})


def test_widget_and_page_carry_the_same_generated_options():
    pytest.importorskip("anywidget")
    from attnmap.viewer import show

    run = generated_run(n=9, prompt=6)
    w = show(run, view="generated", step=1)
    assert w.options == {"view": "generated", "step": 1}
    assert P.decode(w.payload)["header"]["generation"]["boundary"] == 6
    with pytest.raises(AttnmapError, match="step must be"):
        show(run, step=9)
