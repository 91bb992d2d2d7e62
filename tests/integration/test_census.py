"""The census on a real GPT-2 whose attention is set by hand (tests/_handmade.py: previous
token, self, first token and uniform heads in layer 0; induction, same token, two and three
back in layer 1), run through attnmap.capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attnmap
from attnmap.analysis import head_scores
from attnmap.attribution import attention_x_gradient, transform, value_norm
from attnmap.probes import repeat_probe

from .._handmade import C_PREV, HEADS, WORDS, V, build_handmade


@pytest.fixture(scope="module")
def handmade_dir(tmp_path_factory) -> Path:
    return build_handmade(tmp_path_factory.mktemp("handmade") / "gpt2")


N = 20
REPEATED = " ".join(WORDS[:N] + WORDS[:N])  # BOS + r + r, each word once in r


@pytest.fixture(scope="module")
def handmade_run(handmade_dir):
    return attnmap.capture(REPEATED, model=handmade_dir)


def test_the_model_really_computes_the_intended_patterns(handmade_run):
    run = handmade_run
    n = 2 * N + 1
    assert [t.id for t in run.tokens] == [0, *range(4, 4 + N), *range(4, 4 + N)]
    eye = np.eye(n)
    prev = np.eye(n, k=-1)
    prev[0, 0] = 1.0
    first = np.zeros((n, n))
    first[:, 0] = 1.0
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    induction_rows = np.zeros((n, n))
    for i in range(N + 1, n):
        induction_rows[i, i - N + 1] = 1.0
    np.testing.assert_allclose(run.head(0, 0), prev, atol=1e-6)
    np.testing.assert_allclose(run.head(0, 1), eye, atol=1e-6)
    np.testing.assert_allclose(run.head(0, 2), first, atol=1e-6)
    np.testing.assert_allclose(run.head(0, 3), uniform, atol=1e-6)
    np.testing.assert_allclose(run.head(1, 0)[N + 1:], induction_rows[N + 1:], atol=1e-6)


def _best(entries, name):
    vals = [(e["scores"][name], e["layer"], e["head"]) for e in entries
            if e["scores"][name] is not None]
    ranked = sorted(vals, key=lambda v: -v[0])
    assert ranked[0][0] > ranked[1][0], f"tie for {name}: {ranked[:2]}"
    return ranked[0]


@pytest.mark.parametrize(("score", "where", "value"), [
    ("previous_token", (0, 0), 1.0),
    ("self", (0, 1), 1.0),
    ("first_token", (0, 2), 1.0),
    ("entropy_norm", (0, 3), 1.0),
    ("induction", (1, 0), 1.0),
    ("duplicate_token", (1, 1), 0.5),  # half on itself, half on the earlier copy
])
def test_census_ranks_each_built_head_first(handmade_run, score, where, value):
    best, layer, head = _best(head_scores(handmade_run), score)
    assert (layer, head) == where
    assert best == pytest.approx(value, abs=1e-5)


def test_uniform_head_entropy_is_mean_log_of_allowed_keys(handmade_run):
    entry = head_scores(handmade_run)[3]
    n = len(handmade_run.tokens)
    assert entry["scores"]["entropy"] == pytest.approx(np.log(np.arange(1, n + 1)).mean(),
                                                       abs=1e-5)


def test_repeat_probe_finds_the_induction_head(handmade_dir):
    run = repeat_probe(handmade_dir, length=20, seed=3)
    ids = [t.id for t in run.tokens]
    assert ids[0] == 0 and ids[1:21] == ids[21:] and len(set(ids[1:21])) == 20
    assert all(4 <= i < V for i in ids[1:])  # never a special token
    assert run.extra["probe"] == {"kind": "repeat", "length": 20, "seed": 3}
    best, layer, head = _best(head_scores(run), "induction")
    assert (layer, head) == (1, 0) and best == pytest.approx(1.0, abs=1e-5)
    # The previous-token head the induction head relies on is in the earlier layer.
    assert _best(head_scores(run), "previous_token")[1:] == (0, 0)
    assert [t.id for t in repeat_probe(handmade_dir, length=20, seed=3).tokens] == ids
    assert [t.id for t in repeat_probe(handmade_dir, length=20, seed=4).tokens] != ids


def test_repeat_probe_refuses_a_sequence_longer_than_the_model(handmade_dir):
    with pytest.raises(attnmap.AttnmapError, match=r"--length 40 makes 81 tokens.*--length 31"):
        repeat_probe(handmade_dir, length=40)


# --- methods that run the model again -----------------------------------------------------------
def test_value_norm_on_the_handmade_model(handmade_run):
    raw = value_norm(handmade_run, normalize=False)  # [layer, head, query, key]
    assert raw.shape == (2, HEADS, 2 * N + 1, 2 * N + 1)
    # Only layer 0 head 0 writes anything, and each value is C_PREV times a one-hot token.
    np.testing.assert_allclose(raw[0, 0], C_PREV * handmade_run.head(0, 0), atol=1e-6)
    assert np.abs(raw[0, 1:]).max() == 0 and np.abs(raw[1]).max() == 0
    shown = value_norm(handmade_run)
    np.testing.assert_allclose(shown[0, 0].sum(-1), 1.0, atol=1e-6)


def _layer0_f_norms(kind, model, ids):
    """‖f_h(x_j)‖ for layer 0, computed from the weights without hooks: [head, key]."""
    import torch

    with torch.no_grad():
        if kind == "gpt2":
            tr = model.transformer
            x = tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1]))[None]
            z = tr.h[0].ln_1(x)[0]
            d_model = z.shape[-1]
            attn = tr.h[0].attn
            v = z @ attn.c_attn.weight[:, 2 * d_model:] + attn.c_attn.bias[2 * d_model:]
            w_o = attn.c_proj.weight  # [in, out]
        else:
            x = model.bert.embeddings(input_ids=ids)[0]
            layer = model.bert.encoder.layer[0].attention
            v = layer.self.value(x)
            w_o = layer.output.dense.weight.T
        h = model.config.num_attention_heads
        d = v.shape[-1] // h
        return torch.stack([
            (v[:, i * d:(i + 1) * d] @ w_o[i * d:(i + 1) * d]).norm(dim=-1) for i in range(h)
        ]).numpy()


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_value_norm_matches_the_weights(which, gpt2_dir, bert_dir):
    import torch

    from attnmap.capturing import get_model

    path = gpt2_dir if which == "gpt2" else bert_dir
    run = attnmap.capture("The cat that sat on the mat was black.", model=path)
    raw = value_norm(run, normalize=False)
    ids = torch.tensor([[t.id for t in run.tokens]])
    norms = _layer0_f_norms(which, get_model(path).model, ids)
    np.testing.assert_allclose(raw[0], run.layer(0) * norms[:, None, :], rtol=1e-4, atol=1e-6)


def test_attention_x_gradient_follows_chefer(gpt2_run):
    import torch

    from attnmap.capturing import get_model

    rel, what = attention_x_gradient(gpt2_run, return_target=True)
    n = len(gpt2_run.tokens)
    assert rel.shape == (gpt2_run.n_layers, n, n)
    assert "predicted next token" in what
    # Independent gradient through torch.autograd.grad rather than retain_grad.
    m = get_model(gpt2_run.model["id"]).model
    ids = torch.tensor([[t.id for t in gpt2_run.tokens]])
    out = m(input_ids=ids, output_attentions=True)
    logits = out.logits[0, -1]
    grads = torch.autograd.grad(logits[logits.argmax()], out.attentions)
    r = np.eye(n)
    for a, g in zip(out.attentions, grads, strict=True):
        cam = np.clip((g[0] * a[0]).detach().double().numpy(), 0, None).mean(0)
        r = r + cam @ r
    np.testing.assert_allclose(rel[-1], r / r.sum(-1, keepdims=True), rtol=1e-5, atol=1e-8)
    assert np.abs(np.triu(rel[-1], 1)).max() == 0  # a causal model's relevance looks back only


def test_attention_x_gradient_masked_lm_needs_a_mask(bert_dir):
    run = attnmap.capture("The cat sat on the mat.", model=bert_dir)
    with pytest.raises(attnmap.AttnmapError, match="no mask token"):
        attention_x_gradient(run)
    masked = attnmap.capture("The cat sat on the <mask>.", model=bert_dir)
    rel, what = attention_x_gradient(masked, return_target=True)
    assert "masked position" in what and np.allclose(rel.sum(-1), 1.0)


def test_methods_needing_a_model_refuse_a_word_merged_run(gpt2_run):
    # (a unit test in spirit, here because value_norm imports torch before it checks the run)
    merged = transform(gpt2_run, words=True)
    for method in ("value-norm", "grad"):
        with pytest.raises(attnmap.AttnmapError, match="before merging words"):
            transform(merged, method=method)


def test_transform_gives_runs_every_output_can_draw(gpt2_run, minilm_run):
    ro = transform(gpt2_run, method="rollout")
    assert ro.model["method"] == "rollout" and ro.stack().shape == (2, 1, *gpt2_run.masked.shape)
    assert gpt2_run.model.get("method") is None  # the input run is left alone
    vn = transform(gpt2_run, method="value-norm", words=True)
    assert vn.stack().n_heads == gpt2_run.n_heads and vn.model["words"] is True
    assert len(vn.tokens) < len(gpt2_run.tokens)
    g = transform(minilm_run, method="grad")
    assert "mean-pooled" in g.model["method_note"]
    np.testing.assert_allclose(g.layer(-1).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(attnmap.AttnmapError, match="method must be one of"):
        transform(gpt2_run, method="lrp")
