"""The census read a block of rows at a time from queries and keys equals the definitions
computed on the whole matrix, and its parts (sums, row counts) add up across texts."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.analysis.scores import SCORE_NAMES, head_score_parts, head_scores
from attnmap.qkweights import QKLayers


def _qk_run(n=96, heads=4, kv_heads=2, dim=8, layers=3, window=None, softcap=None, sinks=False,
            seed=0, vocab=7):
    """A run stored as queries and keys: causal layers, one sliding-window layer if asked."""
    rng = np.random.default_rng(seed)
    q = [rng.normal(size=(heads, n, dim)).astype(np.float32) * 1.5 for _ in range(layers)]
    k = [rng.normal(size=(kv_heads, n, dim)).astype(np.float32) * 1.5 for _ in range(layers)]
    causal = np.triu(np.ones((n, n), dtype=bool), 1)
    masks = [causal] * layers
    if window is not None:  # the middle layer sees only the last `window` keys
        idx = np.arange(n)
        masks[1] = causal | (idx[:, None] - idx[None, :] >= window)
    sink = [rng.normal(size=heads).astype(np.float32) for _ in range(layers)] if sinks else None
    qk = QKLayers(q, k, [dim ** -0.5] * layers, masks, softcap=softcap, sinks=sink)
    ids = rng.integers(0, vocab, size=n)  # a small vocabulary: many copies for induction
    tokens = [Token(text=f"w{i}", raw=f"w{i}", id=int(i), special=j == 0)
              for j, i in enumerate(ids)]
    stack = AttentionStack("self", qk, masks[0], masks)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks={"self": stack}, model={"id": "qk", "causal": True})


def _definitions(a, masked, ids, *, ignore_first=False, ignore_current=False, k_local=2):
    """Each score of one head's whole matrix `a` [query, key], straight from its definition."""
    n = a.shape[0]
    allowed = ~masked

    def excluded(i, j):
        return (ignore_first and j == 0) or (ignore_current and j == i)

    def pattern(targets):
        fracs = []
        for i in range(n):
            t = [j for j in targets(i) if 0 <= j < n and allowed[i, j] and not excluded(i, j)]
            if not t:
                continue
            left = 1.0 - (a[i, 0] if ignore_first else 0.0)
            if ignore_current and not (ignore_first and i == 0):
                left -= a[i, i]
            if left > 1e-9:
                fracs.append(sum(a[i, j] for j in t) / left)
        return np.mean(fracs) if fracs else None

    def mean(vals):
        return float(np.mean(vals)) if len(vals) else None

    ent = [-sum(a[i, j] * np.log(a[i, j]) for j in range(n) if allowed[i, j] and a[i, j] > 0)
           for i in range(n)]
    return {
        "self": mean([a[i, i] for i in range(n) if allowed[i, i]]),
        "first_token": mean([a[i, 0] for i in range(n) if allowed[i, 0]]),
        "previous_token": pattern(lambda i: [i - 1] if i else []),
        "duplicate_token": pattern(lambda i: [j for j in range(i) if ids[j] == ids[i]]),
        "induction": pattern(lambda i: [j + 1 for j in range(i) if ids[j] == ids[i]]),
        "locality": pattern(lambda i: range(i - k_local, i + k_local + 1)),
        "mean_distance": mean([sum(a[i, j] * abs(i - j) for j in range(n) if allowed[i, j])
                               for i in range(n)]),
        "entropy": mean(ent),
        "entropy_norm": mean([ent[i] / np.log(allowed[i].sum()) for i in range(n)
                              if allowed[i].sum() > 1]),
    }


@pytest.mark.parametrize("kw", [
    {},
    {"window": 9, "softcap": 5.0},
    {"sinks": True},
])
@pytest.mark.parametrize("ignore", [False, True])
def test_blockwise_census_equals_the_definitions(kw, ignore):
    run = _qk_run(**kw)
    st = run.stack()
    ids = [t.id for t in run.tokens]
    # tiny blocks: every block boundary, key span and window edge is crossed many times
    parts = head_score_parts(run, ignore_first=ignore, ignore_current=ignore,
                             block_bytes=4 * st.n_heads * 96 * 5)
    means = parts.means()
    for li in range(st.n_layers):
        full = st.layers.compute(li)  # [head, query, key]
        for h in range(st.n_heads):
            want = _definitions(full[h].astype(np.float64), st.mask(li), ids,
                                ignore_first=ignore, ignore_current=ignore)
            for name, value in want.items():
                got = means[name][li, h]
                if value is None:
                    assert np.isnan(got), (name, li, h)
                else:
                    assert got == pytest.approx(value, abs=1e-5), (name, li, h, kw)


def test_blocks_of_any_size_agree():
    run = _qk_run(n=130, window=17)
    one = head_score_parts(run, block_bytes=1 << 30)  # one block per layer
    for size in (1, 7, 64):
        many = head_score_parts(run, block_bytes=4 * 4 * 130 * size)
        for name in SCORE_NAMES:
            np.testing.assert_array_equal(many.counts[name], one.counts[name])
            np.testing.assert_allclose(many.sums[name], one.sums[name], rtol=1e-6, atol=1e-7)


def test_rows_of_a_qk_layer_equal_the_whole_layer():
    run = _qk_run(n=50, window=6, softcap=3.0, sinks=True)
    st = run.stack()
    for li in range(st.n_layers):
        full = st.layers.compute(li)
        m = st.mask(li)
        for r0, r1 in ((0, 1), (3, 17), (40, 50)):
            seen = np.nonzero(~m[r0:r1].all(axis=0))[0]
            k0, k1 = int(seen.min()), int(seen.max()) + 1
            np.testing.assert_allclose(st.rows(li, r0, r1, k0, k1), full[:, r0:r1, k0:k1],
                                       rtol=1e-5, atol=1e-7)


def test_parts_add_up_across_texts_weighting_rows():
    a, b = _qk_run(n=40, seed=1), _qk_run(n=90, seed=2)
    pa, pb = head_score_parts(a), head_score_parts(b)
    both = (pa + pb).means()["previous_token"]
    # rows weigh alike: the corpus mean is the row-weighted mean, not the mean of the two
    want = (pa.sums["previous_token"] + pb.sums["previous_token"]) / (39 + 89)
    np.testing.assert_allclose(both, want)
    assert not np.allclose(both, (pa.means()["previous_token"] + pb.means()["previous_token"])
                           / 2)
    assert (pa + pb).entries()[0]["layer"] == 0


def test_parts_of_different_models_refuse_to_add():
    from attnmap import AttnmapError
    with pytest.raises(AttnmapError, match="do not add up"):
        head_score_parts(_qk_run(layers=2)) + head_score_parts(_qk_run(layers=3))


def test_progress_counts_every_block():
    run = _qk_run(n=64)
    seen = []
    head_score_parts(run, progress=lambda done, total: seen.append((done, total)),
                     block_bytes=4 * 4 * 64 * 16)
    assert seen[-1][0] == seen[-1][1] == 3 * 4  # 3 layers × 4 blocks of 16 rows
    assert [d for d, _ in seen] == list(range(1, 13))


def test_head_scores_is_the_parts_divided():
    run = _qk_run(n=60)
    assert head_scores(run) == head_score_parts(run).entries()


def test_relate_reads_only_the_words_rows_and_agrees_with_the_whole_matrix():
    from attnmap.analysis import relate

    run = _qk_run(n=40, window=9)
    text, pos, tokens = "", 0, []
    for i, t in enumerate(run.tokens):  # give the tokens offsets into a text: w3 w1 w4 …
        word = f"{t.text}x{i}"
        tokens.append(Token(text=word, raw=word, id=t.id, special=False, start=pos,
                            end=pos + len(word)))
        text += word + " "
        pos += len(word) + 1
    st = run.stack()
    lazy = AttentionRun(text=text, tokens=tokens, stacks={"self": st}, model=run.model)
    dense = AttentionRun(text=text, tokens=tokens, model=run.model, stacks={
        "self": AttentionStack("self", [st.layers.compute(i) for i in range(st.n_layers)],
                               st.mask(0), st.layer_masks)})
    words = [tokens[30].text, tokens[20].text, tokens[29].text]
    got, want = relate(lazy, *words), relate(dense, *words)
    assert [(r["layer"], r["head"]) for r in got["heads"]] == \
        [(r["layer"], r["head"]) for r in want["heads"]]
    for g, w in zip(got["heads"], want["heads"]):
        assert g["to"] == pytest.approx(w["to"], abs=1e-6)
        assert g["vs"] == pytest.approx(w["vs"], abs=1e-6)
    # key 20 is outside the sliding window of row 30 in layer 1: 0 there, not in the others
    assert {r["to"] for r in got["heads"] if r["layer"] == 1} == {0.0}
    assert any(r["to"] > 0 for r in got["heads"] if r["layer"] == 0)
