"""Each layer's own mask reaches every output: file, payload, figure, census, relate,
rollout, word view and diff (a run with a sliding-window layer and a global layer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token, load
from attnmap.viewer import payload as P

N, WINDOW = 10, 3


def _masks():
    i = np.arange(N)
    causal = i[None, :] > i[:, None]  # [query, key]
    window = causal | (i[None, :] <= i[:, None] - WINDOW)  # keys more than 2 back hidden
    return causal, window


def _layer(mask, rng):
    logits = rng.normal(size=(2, N, N)).astype(np.float32)  # [head, query, key]
    logits[:, mask] = -np.inf
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).astype(np.float32)


def windowed_run():
    """Layer 0 sees a window of 3 keys, layer 1 the whole past (Gemma-style alternation)."""
    rng = np.random.default_rng(0)
    causal, window = _masks()
    words = "the cat sat on the mat and the cat sat".split()
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    tokens = [Token(text=w, raw=w, id=hash(w) % 97, start=int(s), end=int(s) + len(w))
              for w, s in zip(words, starts)]
    masks = [window, causal]
    st = AttentionStack("self", [_layer(m, rng) for m in masks], masks[0], masks)
    return AttentionRun(text=" ".join(words), tokens=tokens, stacks={"self": st},
                        model={"id": "hand-made", "causal": True, "layers": 2, "heads": 2})


def test_mask_per_layer_and_shared_mask_refused():
    run = windowed_run()
    causal, window = _masks()
    assert np.array_equal(run.mask(0), window) and np.array_equal(run.mask(-1), causal)
    assert not run.stack().uniform
    with pytest.raises(AttnmapError, match="different masks"):
        _ = run.masked
    same = AttentionStack("self", run.stack().layers, causal, [causal, causal.copy()])
    assert same.uniform and np.array_equal(same.masked, causal)


def test_file_format_3_only_when_layers_differ(tmp_path):
    run = windowed_run()
    path = run.save(tmp_path / "w.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["attnmap"])
        keys = set(f.keys())
    assert meta["format_version"] == 3
    assert {"mask.0", "mask.1"} <= keys and "mask" not in keys
    back = load(path)
    for li in range(2):
        assert np.array_equal(back.mask(li), run.mask(li))
    # one shared mask: still the old version and the old layout
    causal, _ = _masks()
    rng = np.random.default_rng(1)
    plain = AttentionRun(text=run.text, tokens=run.tokens, model=run.model, stacks={
        "self": AttentionStack("self", [_layer(causal, rng)] * 2, causal, [causal, causal])})
    path = plain.save(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["attnmap"])["format_version"] == 1
        assert "mask" in set(f.keys())


def test_payload_marks_each_layers_masked_cells():
    run = windowed_run()
    for li in range(2):
        layer = P.decode_layer(P.encode_layer(run, "self", li))
        hidden = layer["masked"][0]  # [query, key]
        assert np.array_equal(hidden, run.mask(li))


def test_census_counts_only_keys_the_layer_could_see():
    from attnmap.analysis import head_scores

    run = windowed_run()
    scores = head_scores(run)
    # first_token: in the windowed layer only rows 0..2 can see key 0
    for e in scores:
        a = run.head(e["layer"], e["head"])
        rows = ~run.mask(e["layer"])[:, 0]
        assert e["scores"]["first_token"] == pytest.approx(a[rows, 0].mean())
    # a normalised entropy uses the number of keys the layer allowed
    e0 = next(e for e in scores if e["layer"] == 0 and e["head"] == 0)
    a = run.head(0, 0).astype(np.float64)
    allowed = (~run.mask(0)).sum(1)
    ent = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(1)
    keep = allowed > 1
    assert e0["scores"]["entropy_norm"] == pytest.approx((ent[keep] / np.log(allowed[keep])).mean())


def test_relate_rollout_words_and_diff_use_layer_masks():
    from attnmap import diff
    from attnmap.analysis import merge_words, relate, rollout

    run = windowed_run()
    # "sat"#2 (position 9) → "the" (position 0): hidden in the windowed layer only
    res = relate(run, "sat#2", "the")
    rows = {(r["layer"], r["head"]): r for r in res["heads"]} if isinstance(res, dict) else None
    assert rows is not None
    assert all(rows[(0, h)]["to"] == 0.0 for h in range(2))
    r = rollout(run)  # [layer, query, key]
    assert r[0][9, 0] == 0.0 and r[1][9, 0] > 0  # two layers reach past the window
    words = merge_words(run)
    assert not words.stack().uniform
    d = diff.compare(run, run)
    a, b, delta, masked = d.matrices(0, 0)
    assert np.array_equal(masked, run.mask(0)) and not delta.any()


def test_heatmap_hatches_the_window():
    from attnmap.plot import heatmap

    run = windowed_run()
    fig = heatmap(run, 0, 0)
    img = fig.axes[0].images[0]
    data = img.get_array()
    assert np.array_equal(np.ma.getmaskarray(data), run.mask(0))
