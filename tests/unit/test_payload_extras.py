"""The payload header's optional parts: token offsets, the head census, predictions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnmap.analysis import SCORE_NAMES, head_scores
from attnmap.viewer import payload as P

from .test_payload import causal_run, seq2seq_run


def _with_offsets(run):
    toks = []
    for i, t in enumerate(run.tokens):
        toks.append(t if t.special else dataclasses.replace(t, start=2 * i, end=2 * i + 1))
    return dataclasses.replace(run, tokens=toks)


def test_offsets_travel_per_token():
    run = _with_offsets(causal_run(n=5))
    (s,) = P.decode(P.encode(run, layers="none"))["header"]["stacks"]
    assert s["query_offsets"] == s["key_offsets"] == [None, [2, 3], [4, 5], [6, 7], [8, 9]]


def test_scores_are_the_census_in_layer_major_order():
    run = causal_run(n=7, layers=3, heads=4)
    (s,) = P.header(run)["stacks"]
    rows = head_scores(run)
    assert s["scores"]["names"] == list(SCORE_NAMES)
    assert len(s["scores"]["values"]) == 12
    for r, vals in zip(rows, s["scores"]["values"], strict=True):
        assert vals == [r["scores"][n] for n in SCORE_NAMES]
    assert s["scores"]["values"][1 * 4 + 2] == [rows[6]["scores"][n] for n in SCORE_NAMES]


def test_no_scores_for_cross_attention_or_long_runs(monkeypatch):
    head = P.header(seq2seq_run())
    by = {s["name"]: s for s in head["stacks"]}
    assert by["cross"]["scores"] is None
    assert by["encoder"]["scores"] is not None and by["decoder"]["scores"] is not None
    # Decoder tokens have no offsets into the input text; encoder tokens without them give null.
    assert by["cross"]["query_offsets"] == [None] * 4
    monkeypatch.setattr(P, "SCORES_MAX_TOKENS", 6)
    assert P.header(causal_run(n=7))["stacks"][0]["scores"] is None
    assert P.header(causal_run(n=6))["stacks"][0]["scores"] is not None


def test_predictions_in_header_only_when_captured():
    run = causal_run(n=4)
    assert "predictions" not in P.header(run)
    preds = [{"position": i, "token": t.text, "top": [{"token": "</script>", "p": 0.5}],
              "next": None} for i, t in enumerate(run.tokens)]
    run.extra["predictions"], run.extra["predictions_kind"] = preds, "next-token"
    head = P.decode(P.encode(run))["header"]
    assert head["predictions"] == preds
    assert head["predictions_kind"] == "next-token" and head["predictions_stacks"] == ["self"]
    s2s = seq2seq_run()
    s2s.extra.update(predictions=preds[:2], predictions_kind="decoder")
    assert P.header(s2s)["predictions_stacks"] == ["decoder", "cross"]


def test_header_is_still_version_1_and_decodes():
    run = causal_run()
    d = P.decode(P.encode(run))
    assert d["version"] == 1
    assert np.isfinite([v for row in d["header"]["stacks"][0]["scores"]["values"]
                        for v in row if v is not None]).all()


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_runs_still_encode(n):
    P.decode(P.encode(causal_run(n=n, layers=1, heads=1)))
