"""Words: merging subword tokens, and finding a named word for relate (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.analysis import merge_words, relate, word_groups

TEXT = "unbelievable cats."
SPANS = [None, (0, 2), (2, 8), (8, 12), (13, 17), (17, 18), None]
RAWS = ["[CLS]", "un", "##believ", "##able", "cats", "##.", "[SEP]"]


def tokens(spans=SPANS, raws=RAWS):
    out = []
    for i, (span, raw) in enumerate(zip(spans, raws, strict=True)):
        special = raw.startswith("[")
        s, e = span if span else (None, None)
        out.append(Token(text=raw, raw=raw, id=100 + i, special=special, start=s, end=e))
    return out


def run_with(a, *, causal=False, text=TEXT, toks=None):
    a = np.asarray(a, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a
    n = a.shape[-1]
    masked = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    return AttentionRun(text=text, tokens=toks or tokens(),
                        stacks={"self": AttentionStack("self", [a], masked)},
                        model={"id": "hand", "causal": causal})


def random_rows(n, seed=0, causal=False):
    rng = np.random.default_rng(seed)
    a = rng.random((2, n, n))
    if causal:
        a *= np.tril(np.ones((n, n)))
    return a / a.sum(-1, keepdims=True)


def test_groups_by_offsets_and_specials():
    assert word_groups(tokens()) == [[0], [1, 2, 3], [4, 5], [6]]


def test_groups_by_markers_without_offsets():
    bpe = [Token(text=t, raw=r, id=i) for i, (t, r) in
           enumerate([("The", "The"), ("␣c", "Ġc"), ("at", "at"), ("␣sat", "Ġsat")])]
    assert word_groups(bpe) == [[0], [1, 2], [3]]
    wp = [Token(text=r, raw=r, id=i) for i, r in enumerate(["play", "##ing", "ball"])]
    assert word_groups(wp) == [[0, 1], [2]]
    sp = [Token(text=t, raw=r, id=i) for i, (t, r) in
          enumerate([("␣un", "▁un"), ("do", "do"), ("␣it", "▁it")])]
    assert word_groups(sp) == [[0, 1], [2]]


def test_merge_sums_keys_and_averages_queries_by_hand():
    a = random_rows(7)
    w = merge_words(run_with(a))
    groups = [[0], [1, 2, 3], [4, 5], [6]]
    assert [t.text for t in w.tokens] == ["[CLS]", "unbelievable", "cats.", "[SEP]"]
    assert (w.tokens[1].start, w.tokens[1].end, w.tokens[1].id) == (0, 12, -1)
    assert w.tokens[0] == tokens()[0]  # special tokens stay as they were
    got = w.layer(0)  # [head, word, word]
    for h in range(2):
        for qi, qg in enumerate(groups):
            for ki, kg in enumerate(groups):
                want = a[h][np.ix_(qg, kg)].sum(axis=1).mean()
                assert got[h, qi, ki] == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    assert w.model["words"] is True and "words" not in run_with(a).model


def test_merged_mask_is_masked_only_where_every_token_cell_is():
    w = merge_words(run_with(random_rows(7, causal=True), causal=True))
    # Words 0..3; a word sees itself (its first token sees its own first token) and earlier
    # words, never later ones.
    want = np.triu(np.ones((4, 4), bool), 1)
    np.testing.assert_array_equal(w.masked, want)
    np.testing.assert_allclose(w.layer(0).sum(-1), 1.0, atol=1e-6)
    assert w.layer(0)[:, want].max() == 0


def test_merge_causal_by_hand():
    # Two tokens of one word: the first cannot see the second.
    toks = [Token("ab", "ab", 1, start=0, end=2), Token("cd", "cd", 2, start=2, end=4),
            Token("x", "x", 3, start=5, end=6)]
    a = np.array([[1, 0, 0], [.4, .6, 0], [.2, .3, .5]])
    w = merge_words(run_with(a, causal=True, text="abcd x", toks=toks))
    np.testing.assert_allclose(w.layer(0)[0], [[1, 0], [.5, .5]], atol=1e-6)
    assert [t.text for t in w.tokens] == ["abcd", "x"]


# --- relate ------------------------------------------------------------------------------------
REL_TEXT = "The cat that sat on the mat was black."


def rel_run(causal=False, seed=3):
    spans, raws, pos = [], [], 0
    for piece in ["The", " cat", " th", "at", " sat", " on", " the", " m", "at", " was",
                  " black", "."]:
        start = pos + (1 if piece.startswith(" ") else 0)
        pos += len(piece)
        spans.append((start, pos))
        raws.append(piece.replace(" ", "Ġ"))
    toks = [Token(text=r, raw=r, id=i, start=s, end=e)
            for i, (r, (s, e)) in enumerate(zip(raws, spans, strict=True))]
    assert "".join(REL_TEXT[s:e] for s, e in spans) == REL_TEXT.replace(" ", "")
    return run_with(random_rows(len(toks), seed, causal), causal=causal, text=REL_TEXT,
                    toks=toks)


def test_relate_agrees_with_the_raw_numbers():
    run = rel_run()
    res = relate(run, "was", "cat", vs="mat")
    a = run.layer(0)
    # was = token 9, cat = token 1, mat = tokens 7+8 (summed over keys)
    for row in res["heads"]:
        h = row["head"]
        assert row["to"] == pytest.approx(a[h, 9, 1])
        assert row["vs"] == pytest.approx(a[h, 9, 7] + a[h, 9, 8])
        assert row["diff"] == pytest.approx(row["to"] - row["vs"])
    diffs = [r["diff"] for r in res["heads"]]
    assert diffs == sorted(diffs, reverse=True)
    assert res["from"]["tokens"] == [9] and res["vs"]["tokens"] == [7, 8]
    assert res["ranked_by"] == "to - vs" and res["stack"] == "self"


def test_relate_multi_token_query_is_averaged():
    run = rel_run()
    res = relate(run, "mat", "the")
    a = run.layer(0)
    for row in res["heads"]:
        assert row["to"] == pytest.approx((a[row["head"], 7, 0] + a[row["head"], 8, 0]) / 2)
    assert res["to"]["ambiguous"] is True and res["to"]["occurrences"] == 2
    assert any("occurs 2 times" in n for n in res["notes"])
    second = relate(run, "mat", "the#2")
    assert second["to"]["tokens"] == [6] and second["to"]["ambiguous"] is False
    assert "vs" not in second["heads"][0] and second["vs"] is None


def test_relate_matches_case_and_punctuation_loosely():
    run = rel_run()
    assert relate(run, "BLACK", "the")["from"]["tokens"] == [10]
    assert relate(run, "black.", "the")["from"]["word"] == "black"


def test_relate_says_when_the_target_is_ahead_in_a_causal_model():
    res = relate(rel_run(causal=True), "cat", "black")
    assert all(r["to"] == 0 for r in res["heads"])
    assert any("cannot attend forward" in n for n in res["notes"])


def test_relate_errors():
    run = rel_run()
    with pytest.raises(AttnmapError, match=r"'dog' is not in the text; its words are: The, cat"):
        relate(run, "dog", "cat")
    with pytest.raises(AttnmapError, match=r"occurs 1 time\(s\), so there is no #3"):
        relate(run, "was", "cat#3")
    with pytest.raises(AttnmapError, match="empty"):
        relate(run, "was", " ")
