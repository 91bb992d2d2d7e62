"""Captured numbers equal what Hugging Face returns for the same model and text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnmap
from attnmap.models import bundled_model_path

TEXT = "The cat that sat on the mat was black.\nIt  was."


def _hf_attentions(path, text, *, seq2seq_target_ids=None):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    ids = tok(text, return_tensors="pt")["input_ids"]
    kwargs = {}
    if seq2seq_target_ids is not None:
        kwargs["decoder_input_ids"] = torch.tensor([seq2seq_target_ids])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, **kwargs)
    return out


def _check_rows(run):
    for st in run.stacks.values():
        for layer in st.layers:
            sums = np.where(st.masked, 0.0, layer).sum(-1)  # [head, query]
            np.testing.assert_allclose(sums, 1.0, atol=1e-5)
            # masked cells hold no attention
            assert np.all(layer[:, st.masked] == 0)


@pytest.mark.parametrize("fixture", ["gpt2_dir", "bert_dir"])
def test_parity_self_attention(fixture, request):
    path = request.getfixturevalue(fixture)
    run = attnmap.capture(TEXT, model=path)
    ref = _hf_attentions(path, TEXT).attentions
    assert run.attention.shape == (len(ref), *ref[0].shape[1:])
    for i, a in enumerate(ref):
        assert np.abs(run.layer(i) - a[0].numpy()).max() <= 1e-6
    _check_rows(run)


def test_parity_bundled_minilm(minilm_run):
    ref = _hf_attentions(str(bundled_model_path()), minilm_run.text).attentions
    assert minilm_run.attention.shape == (6, 12, 12, 12)
    for i, a in enumerate(ref):
        assert np.abs(minilm_run.layer(i) - a[0].numpy()).max() <= 1e-6
    assert not minilm_run.causal
    assert not minilm_run.masked.any()
    assert minilm_run.tokens[0].text == "[CLS]" and minilm_run.tokens[0].special
    _check_rows(minilm_run)


def test_causal_upper_triangle_masked(gpt2_run):
    assert gpt2_run.causal
    n = len(gpt2_run.tokens)
    np.testing.assert_array_equal(gpt2_run.masked, np.triu(np.ones((n, n), bool), 1))
    assert gpt2_run.model["architecture"] == "decoder"


@pytest.mark.parametrize("fixture", ["t5_dir", "bart_dir"])
def test_encoder_decoder_with_target(fixture, request):
    path = request.getfixturevalue(fixture)
    run = attnmap.capture(TEXT, model=path, target="The mat was black.")
    assert list(run.stacks) == ["encoder", "decoder", "cross"]
    n, m = len(run.tokens), len(run.target_tokens)
    assert run.stack("encoder").shape[2:] == (n, n)
    assert run.stack("decoder").shape[2:] == (m, m)
    assert run.stack("cross").shape[2:] == (m, n)  # queries = target, keys = source
    assert run.query_tokens("cross") == run.target_tokens
    assert run.key_tokens("cross") == run.tokens
    assert run.stack("decoder").masked[0, 1] and not run.stack("cross").masked.any()
    dec_ids = [t.id for t in run.target_tokens]
    ref = _hf_attentions(path, TEXT, seq2seq_target_ids=dec_ids)
    for name, attn in [("encoder", ref.encoder_attentions), ("decoder", ref.decoder_attentions),
                       ("cross", ref.cross_attentions)]:
        for i, a in enumerate(attn):
            assert np.abs(run.layer(i, name) - a[0].numpy()).max() <= 1e-6
    _check_rows(run)


def test_encoder_decoder_greedy_continuation(bart_dir):
    run = attnmap.capture("The cat sat.", model=bart_dir, max_new_tokens=5)
    assert run.model["target_generated"] is True
    assert 1 <= len(run.target_tokens) <= 6
    assert run.stack("cross").shape[2:] == (len(run.target_tokens), len(run.tokens))


def test_byte_level_tokens_readable(gpt2_dir):
    gpt2_run = attnmap.capture(TEXT, model=gpt2_dir)
    texts = [t.text for t in gpt2_run.tokens]
    raws = [t.raw for t in gpt2_run.tokens]
    assert any(r.startswith("Ġ") for r in raws)  # the tokenizer really is byte-level
    assert not any("Ġ" in t or "Ċ" in t for t in texts)
    assert "⏎" in texts
    assert all(t for t in texts)
    # a double space: a whitespace-only token stays visible
    assert any(set(t) == {"␣"} for t in texts)
    # offsets point back into the text
    for t in gpt2_run.tokens:
        if t.start is not None:
            assert gpt2_run.text[t.start:t.end].strip() in t.text.replace("␣", " ").replace(
                "⏎", "\n")


def test_too_long_text(gpt2_dir):
    long = "the cat " * 100  # the tiny model takes 64 positions
    with pytest.raises(attnmap.AttnmapError, match="maximum of 64"):
        attnmap.capture(long, model=gpt2_dir)
    with pytest.warns(attnmap.AttnmapWarning, match="keeping the first 64"):
        run = attnmap.capture(long, model=gpt2_dir, truncate=True)
    assert len(run.tokens) == 64


def test_saved_run_round_trip(gpt2_run, tmp_path):
    back = attnmap.load(gpt2_run.save(tmp_path / "r.safetensors"))
    np.testing.assert_array_equal(back.attention, gpt2_run.attention)
    assert back.tokens == gpt2_run.tokens


@pytest.mark.parametrize("fixture", ["gpt2_dir", "bert_dir"])
def test_long_input_mode_matches_weights(fixture, request, tmp_path):
    """store="qk" keeps queries and keys and computes each layer when read: same numbers."""
    from safetensors import safe_open

    path = request.getfixturevalue(fixture)
    full = attnmap.capture(TEXT, model=path, store="weights")
    lazy = attnmap.capture(TEXT, model=path, store="qk")
    assert lazy.stack().lazy and not full.stack().lazy
    assert lazy.stack().shape == full.stack().shape
    assert np.abs(lazy.attention - full.attention).max() <= 1e-6
    np.testing.assert_array_equal(lazy.masked, full.masked)
    f = lazy.save(tmp_path / "qk.safetensors")
    with safe_open(str(f), framework="numpy") as fh:
        # a causal (GPT-2) or all-visible (BERT) mask: one span of keys per query
        assert {"q.layer.0", "k.layer.1", "lse.layer.0", "mask.rows"} <= set(fh.keys())
        assert "layer.0" not in set(fh.keys())
    back = attnmap.load(f)
    assert back.stack().lazy
    assert np.abs(back.attention - full.attention).max() <= 1e-6
    _check_rows(back)


def test_long_input_mode_refused_for_encoder_decoder(t5_dir):
    with pytest.raises(attnmap.AttnmapError, match="encoder-only and decoder-only"):
        attnmap.capture(TEXT, model=t5_dir, store="qk")
