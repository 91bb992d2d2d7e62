"""Today's architectures, built tiny from configs: numbers equal eager attention, and each
layer's mask is the one the model used (windows, the causal future), on both storage paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _zoo
import attnmap
from attnmap import AttnmapError

# longer than every window in the zoo (4 tokens), so windows really hide keys
TEXT = "The cat that sat on the mat was black. The dog that ran in the park was brown."
ALL = [*_zoo.SPECS, "gemma3-multimodal", "gpt-oss-sinks"]


@pytest.fixture(scope="module")
def tok():
    import _models

    return _models.train_tokenizer()


_BUILT: dict[str, object] = {}


def _model(name, tok):
    if name not in _BUILT:
        if name == "gpt-oss-sinks":
            _BUILT[name] = _gpt_oss(tok)
        else:
            _BUILT[name] = _zoo.build(name, tok)
    return _BUILT[name]


def _gpt_oss(tok):
    """gpt-oss: a learned sink logit per head takes part in the softmax (rows sum below 1)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=32,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, num_local_experts=2, num_experts_per_tok=1,
                       sliding_window=_zoo.WINDOW, max_position_embeddings=128,
                       layer_types=["sliding_attention", "full_attention"],
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    m = GptOssForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)
    return m


def _eager(model, ids):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            x = torch.tensor([ids])
            out = model(input_ids=x, attention_mask=torch.ones_like(x), output_attentions=True)
            return [a[0].float().numpy() for a in out.attentions]
    finally:
        model.set_attn_implementation(before)


def _check_masks(run, ref):
    for li, a in enumerate(ref):
        mask = run.mask(li)
        # every cell eager leaves at exactly 0 in all heads is masked in that layer …
        zero_everywhere = (a == 0).all(axis=0)
        assert np.array_equal(zero_everywhere, mask), f"layer {li}"
        # … and no masked cell holds attention
        assert not np.any(a[:, mask])


@pytest.mark.parametrize("name", ALL)
def test_weights_equal_eager_and_masks_are_the_layers(name, tok):
    model = _model(name, tok)
    run = attnmap.capture(TEXT, model=model, tokenizer=tok, store="weights")
    ids = [t.id for t in run.tokens]
    assert len(ids) > 2 * _zoo.WINDOW
    ref = _eager(model, ids)
    assert run.stack().n_layers == len(ref)
    for li, a in enumerate(ref):
        assert np.abs(run.layer(li) - a).max() <= 1e-6
    _check_masks(run, ref)
    n = len(ids)
    future = np.triu(np.ones((n, n), bool), 1)
    causal = name in _zoo.CAUSAL or name == "gpt-oss-sinks"
    assert run.causal == causal
    assert run.model["architecture"] == ("decoder" if causal else "encoder")
    windowed = [li for li in range(len(ref))
                if not np.array_equal(run.mask(li), future if causal else ~np.ones_like(future))]
    expected = _zoo.WINDOWED.get(name, [0] if name == "gpt-oss-sinks" else [])
    assert windowed == expected
    if windowed and len(windowed) < len(ref):
        assert not run.stack().uniform
        with pytest.raises(AttnmapError, match="different masks"):
            _ = run.masked


@pytest.mark.parametrize("name", ALL)
def test_qk_path_equals_eager_or_says_why_not(name, tok):
    model = _model(name, tok)
    if name in _zoo.NO_QK:
        with pytest.raises(AttnmapError, match=r"--store weights works up to [\d,]+ tokens"):
            attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
        return
    run = attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    assert run.stack().lazy
    ref = _eager(model, [t.id for t in run.tokens])
    for li, a in enumerate(ref):
        assert np.abs(run.layer(li) - a).max() <= 1e-6, f"layer {li}"
    _check_masks(run, ref)


@pytest.mark.parametrize("name", ["qwen2-sliding", "gemma2-softcap", "gpt-oss-sinks"])
def test_qk_run_file_keeps_masks_softcap_and_sinks(name, tok, tmp_path):
    model = _model(name, tok)
    run = attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    path = run.save(tmp_path / "run.safetensors")
    back = attnmap.load(path)
    for li in range(run.n_layers):
        assert np.array_equal(back.mask(li), run.mask(li))
        assert np.abs(back.layer(li) - run.layer(li)).max() <= 1e-7


@pytest.mark.parametrize("name,dtype,atol", [
    ("llama", torch.bfloat16, 2e-2), ("mistral-window", torch.float16, 2e-3),
    ("gemma2-softcap", torch.bfloat16, 2e-2),
])
def test_half_precision_qk_equals_eager_in_that_dtype(name, dtype, atol, tok):
    model = _zoo.build(name, tok, dtype=dtype)
    weights = attnmap.capture(TEXT, model=model, tokenizer=tok, store="weights")
    qk = attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    assert weights.model["dtype"] == str(dtype).replace("torch.", "")
    for li in range(weights.n_layers):
        # the masks are read by dtype (a float16 mask holds -65504, not -inf)
        assert np.array_equal(qk.mask(li), weights.mask(li))
        assert np.abs(qk.layer(li) - weights.layer(li)).max() <= atol
    if "window" in name:
        assert not np.array_equal(qk.mask(0), np.triu(np.ones_like(qk.mask(0)), 1))


def test_auto_store_never_refuses_what_weights_would_capture(tok, monkeypatch):
    """A long text to a model the q/k path cannot read: auto keeps weights while they fit."""
    import sys

    cap = sys.modules["attnmap.capturing"]

    model = _model("bloom", tok)
    n = len(attnmap.capture(TEXT, model=model, tokenizer=tok).tokens)
    per_run = 4 * n * n * 2 * 4  # float32 × layers × heads
    monkeypatch.setattr(cap, "WEIGHTS_BUDGET", per_run)  # fits exactly: weights
    assert not attnmap.capture(TEXT, model=model, tokenizer=tok, store="auto").stack().lazy
    monkeypatch.setattr(cap, "WEIGHTS_BUDGET", per_run - 1)  # over: q/k, which BLOOM can't
    with pytest.raises(AttnmapError, match="ALiBi"):
        attnmap.capture(TEXT, model=model, tokenizer=tok, store="auto")


def test_encoder_decoders_still_capture_three_stacks(tok):
    for name in _zoo.SEQ2SEQ:
        model = _zoo.build(name, tok)
        run = attnmap.capture(TEXT, model=model, tokenizer=tok, target="The cat")
        assert list(run.stacks) == ["encoder", "decoder", "cross"]
        assert run.model["architecture"] == "encoder-decoder"
        m = run.mask(0, "decoder")
        assert np.array_equal(m, np.triu(np.ones_like(m), 1))


def test_in_memory_equals_path_loaded(tok, tmp_path):
    for name in ("llama", "gemma3-multimodal", "t5-encoder"):
        model = _model(name, tok)
        path = tmp_path / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        a = attnmap.capture(TEXT, model=model, tokenizer=tok)
        b = attnmap.capture(TEXT, model=path)
        assert b.model["class"] == type(model).__name__  # loaded as the class it was saved as
        assert a.causal == b.causal
        assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
        for li in range(a.n_layers):
            assert np.array_equal(a.layer(li), b.layer(li))
            assert np.array_equal(a.mask(li), b.mask(li))
        from attnmap.models import describe

        info = describe(path)
        assert info["causal"] == a.causal
        assert info["architecture"] == a.model["architecture"]


def test_pipeline_object_is_a_model_too(tok):
    from transformers import pipeline

    model = _model("llama", tok)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    a = attnmap.capture(TEXT, model=pipe)
    b = attnmap.capture(TEXT, model=model, tokenizer=tok)
    assert np.array_equal(a.layer(1), b.layer(1))
    with pytest.raises(AttnmapError, match="needs its tokenizer"):
        attnmap.capture(TEXT, model=model)


def test_model_attention_setting_is_restored(tok):
    model = _zoo.build("llama", tok)
    model.set_attn_implementation("sdpa")
    attnmap.capture(TEXT, model=model, tokenizer=tok)
    attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    assert model.config._attn_implementation == "sdpa"
