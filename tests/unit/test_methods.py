"""Rollout and transform on hand-made runs (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token, rollout, transform

L0 = [[1, 0, 0, 0], [.5, .5, 0, 0], [.2, .3, .5, 0], [.1, .15, .5, .25]]
L1 = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def make_run(layers, *, causal=True, stacks=None):
    layers = [np.asarray(x, dtype=np.float32) for x in layers]
    layers = [x[None] if x.ndim == 2 else x for x in layers]
    n = layers[0].shape[-1]
    tokens = [Token(text=f"t{i}", raw=f"t{i}", id=i, start=3 * i, end=3 * i + 2)
              for i in range(n)]
    masked = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks=stacks or {"self": AttentionStack("self", layers, masked)},
                        model={"id": "hand", "causal": causal, "heads": layers[0].shape[0]})


def test_rollout_worked_example():
    r = rollout(make_run([L0, L1]))  # [layer, query, key]
    assert r.shape == (2, 4, 4)
    np.testing.assert_allclose(r[-1, -1], [.075, .1125, .5, .3125], atol=1e-7)
    # Layer 0 alone: 0.5·A + 0.5·I
    np.testing.assert_allclose(r[0], 0.5 * np.asarray(L0) + 0.5 * np.eye(4), atol=1e-7)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-6)
    assert np.abs(np.triu(r[-1], 1)).max() == 0  # causal stays lower-triangular


def test_rollout_averages_heads():
    two_heads = np.stack([np.eye(4), np.asarray(L0)])
    r = rollout(make_run([two_heads]))
    mean = (np.eye(4) + np.asarray(L0)) / 2
    np.testing.assert_allclose(r[0], 0.5 * mean + 0.5 * np.eye(4), atol=1e-7)


def test_rollout_rows_sum_to_one_on_random_bidirectional_layers():
    rng = np.random.default_rng(1)
    layers = rng.random((3, 2, 5, 5))
    layers /= layers.sum(-1, keepdims=True)
    r = rollout(make_run(list(layers), causal=False))
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-6)
    # by the formula, step by step
    joint = np.eye(5)
    for layer in layers:
        joint = (0.5 * layer.mean(0) + 0.5 * np.eye(5)) @ joint
    np.testing.assert_allclose(r[-1], joint, atol=1e-6)


def test_transform_rollout_is_a_new_run_with_one_head_per_layer():
    run = make_run([L0, L1])
    out = transform(run, method="rollout")
    assert out is not run and out.model["method"] == "rollout" and out.model["heads"] == 1
    assert out.stack().shape == (2, 1, 4, 4)
    np.testing.assert_allclose(out.head(-1, 0)[-1], [.075, .1125, .5, .3125], atol=1e-6)
    assert np.array_equal(out.masked, run.masked)
    assert "method" not in run.model
    np.testing.assert_array_equal(transform(run).layer(1), run.layer(1))  # raw: unchanged


def test_transform_words_after_the_method():
    run = make_run([L0, L1])
    # tokens 1 and 2 touch: one word
    run.tokens[2] = Token(text="t2", raw="t2", id=2, start=run.tokens[1].end, end=6)
    out = transform(run, method="rollout", words=True)
    assert len(out.tokens) == 3 and out.model["words"] and out.model["method"] == "rollout"
    np.testing.assert_allclose(out.layer(-1).sum(-1), 1.0, atol=1e-6)


def test_rollout_refuses_cross_attention_and_transform_drops_it():
    enc = AttentionStack("encoder", [np.eye(3)[None].astype(np.float32)], np.zeros((3, 3), bool))
    cross = AttentionStack("cross", [np.full((1, 2, 3), 1 / 3, np.float32)],
                           np.zeros((2, 3), bool))
    dec = AttentionStack("decoder", [np.eye(2)[None].astype(np.float32)],
                         np.triu(np.ones((2, 2), bool), 1))
    base = make_run([np.eye(3)])
    run = AttentionRun(text=base.text, tokens=base.tokens, target_tokens=base.tokens[:2],
                       stacks={"encoder": enc, "decoder": dec, "cross": cross},
                       model={"id": "hand", "causal": False})
    with pytest.raises(AttnmapError, match="cross-attention"):
        rollout(run, stack="cross")
    out = transform(run, method="rollout")
    assert list(out.stacks) == ["encoder", "decoder"]
    assert "cross-attention left out" in out.model["method_note"]


def test_bad_method():
    run = make_run([L0])
    with pytest.raises(AttnmapError, match=r"method must be one of raw, rollout, value-norm, grad"):
        transform(run, method="flow")
    # methods that run the model refuse a word-merged run: tests/integration/test_census.py
