"""The long-input capture (store="qk") computes each layer's output with torch's fused
attention in query blocks: the model's outputs stay its own, the stored queries and keys
give eager's weights, and blocks beyond a sliding window never see the keys it hides."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import _zoo
import attnmap
from attnmap import _qk

from .test_zoo import TEXT, _eager, _model

QK_MODELS = [n for n in _zoo.SPECS if n not in _zoo.NO_QK] + ["gpt-oss-sinks"]
# about 110 tokens (the zoo's models have 128 positions): 27 windows of 4 tokens
LONG_TEXT = " ".join([TEXT] * 5) + " The cat that sat on the mat was black."


@pytest.fixture(scope="module")
def tok():
    import _models

    return _models.train_tokenizer()


def _rows_per_block(monkeypatch, rows: int, keys: int) -> None:
    """Make query blocks `rows` long for calls with `keys` keys."""
    monkeypatch.setattr(_qk, "BLOCK_BYTES", 4 * keys * rows)


def _outputs(model, ids, *, qk: bool):
    x = torch.tensor([ids])
    with torch.no_grad():
        if qk:
            with _qk.recording(model, "qk"):
                out = model(input_ids=x, attention_mask=torch.ones_like(x))
        else:
            before = model.config._attn_implementation
            model.set_attn_implementation("eager")
            try:
                out = model(input_ids=x, attention_mask=torch.ones_like(x))
            finally:
                model.set_attn_implementation(before)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("rows", [None, 3])
@pytest.mark.parametrize("name", QK_MODELS)
def test_qk_forward_gives_the_models_own_outputs(name, rows, tok, monkeypatch):
    """Logits (or the last hidden state) under the recorder equal eager's: soft-capped and
    sink layers (computed blockwise, not by SDPA) stay causal when transformers drops the
    mask."""
    model = _model(name, tok)
    ids = tok(TEXT)["input_ids"]
    if rows is not None:
        _rows_per_block(monkeypatch, rows, len(ids))
    ref = _outputs(model, ids, qk=False)
    got = _outputs(model, ids, qk=True)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", ["mistral-window", "qwen2-sliding", "gemma2-softcap",
                                  "gpt-oss-sinks"])
def test_windowed_model_beyond_its_window_in_blocks_equals_eager(name, tok, monkeypatch):
    """~110 tokens, a 4-token window, blocks of 8 queries: most blocks lie wholly beyond the
    window, so they get only the keys it lets through; weights read back from the stored
    queries and keys equal eager's, and the outputs too."""
    model = _model(name, tok)
    ids = tok(LONG_TEXT)["input_ids"]
    n = len(ids)
    assert n > 25 * _zoo.WINDOW
    _rows_per_block(monkeypatch, 8, n)
    seen: list[tuple[int, int]] = []  # (queries, keys) of each fused call
    fused = _qk._fused

    def spy(q, k, *args, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return fused(q, k, *args, **kwargs)

    monkeypatch.setattr(_qk, "_fused", spy)
    run = attnmap.capture(LONG_TEXT, model=model, tokenizer=tok, store="qk")
    assert run.stack().lazy and len(run.tokens) == n
    ref = _eager(model, ids)
    for li, a in enumerate(ref):
        assert np.abs(run.layer(li) - a).max() <= 1e-6, f"layer {li}"
        hidden = run.mask(li)
        assert not np.any(a[:, hidden])
    windowed = _zoo.WINDOWED.get(name, [0])
    for li in windowed:  # the window hides every key WINDOW or more back
        rows, cols = np.indices((n, n))
        assert np.array_equal(run.mask(li), (cols > rows) | (cols <= rows - _zoo.WINDOW))
    if name in ("mistral-window", "qwen2-sliding"):  # these go through SDPA …
        # … in blocks where a layer has a mask; a causal layer without one in one call
        assert seen and all(q <= 8 or (q, k) == (n, n) for q, k in seen)
        assert min(k for _, k in seen) <= 8 + _zoo.WINDOW  # a block beyond the window
    monkeypatch.setattr(_qk, "_fused", fused)
    assert float((_outputs(model, ids, qk=True) - _outputs(model, ids, qk=False)).abs().max()
                 ) <= 1e-5


@pytest.mark.parametrize("name", ["llama", "mistral-window", "gemma2-softcap"])
def test_capture_keeps_each_rows_log_sum_exp(name, tok, tmp_path):
    """On the CPU the fused attention also gives each row's log-sum-exp: exp(logit − lse)
    is the eager weight; it survives a float32 save (not a float16 one, whose rounded q/k it
    would not fit), and tiles drawn with it equal tiles that find the normalisers themselves.
    Soft-capped layers run in eager blocks and keep none."""
    from attnmap import tiles

    model = _model(name, tok)
    run = attnmap.capture(LONG_TEXT, model=model, tokenizer=tok, store="qk")
    lay = run.stack().layers
    if name == "gemma2-softcap":
        assert lay.logsumexp is None
        return
    assert lay.logsumexp is not None and len(lay.logsumexp) == run.n_layers
    ref = _eager(model, tok(LONG_TEXT)["input_ids"])
    for li, a in enumerate(ref):  # a: [head, query, key]
        q = lay.q[li].astype(np.float64)  # [head, query, dim]
        k = np.repeat(lay.k[li].astype(np.float64), q.shape[0] // lay.k[li].shape[0], 0)
        logits = lay.scaling[li] * q @ k.transpose(0, 2, 1)  # [head, query, key]
        lse = lay.logsumexp[li]
        assert lse.shape == a.shape[:2] and lse.dtype == np.float32
        seen = ~run.mask(li)
        w = np.exp(logits - lse[:, :, None].astype(np.float64))
        np.testing.assert_allclose(w[:, seen], a[:, seen], rtol=1e-4, atol=1e-7)
    path = run.save(tmp_path / "r.safetensors")
    back = attnmap.load(path)
    for x, y in zip(back.stack().layers.logsumexp, lay.logsumexp, strict=True):
        assert np.array_equal(x, y)
    assert attnmap.load(run.save(tmp_path / "h.safetensors", dtype="float16")
                        ).stack().layers.logsumexp is None
    plain = attnmap.load(path)
    plain.stack().layers.logsumexp = None
    for li in range(run.n_layers):
        for head in (0, "mean", "max"):
            for reduce in tiles.REDUCES:
                for block in (1, 4):
                    with_lse = tiles.tile(back, li, head, block=block, reduce=reduce, cache=None)
                    own = tiles.tile(plain, li, head, block=block, reduce=reduce, cache=None)
                    np.testing.assert_allclose(with_lse, own, rtol=2e-5, atol=1e-7)
                    if block == 1:
                        exact = ref[li][head] if head == 0 else (
                            ref[li].mean(0) if head == "mean" else ref[li].max(0))
                        hidden = run.mask(li)
                        np.testing.assert_allclose(with_lse[~hidden], exact[~hidden],
                                                   rtol=2e-5, atol=1e-7)
                        assert np.isnan(with_lse[hidden]).all()
    # rows read blockwise (census, long page) take it too: the same weights and entropies
    a, b = back.stack().layers, plain.stack().layers
    n = len(run.tokens)
    for li in range(run.n_layers):
        for r0, r1 in ((0, 7), (7, n)):
            pa, ea = a.rows(li, r0, r1, entropy=True)
            pb, eb = b.rows(li, r0, r1, entropy=True)
            np.testing.assert_allclose(pa, pb, rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.rows(li, r0, r1, heads=[1]), pb[1:2], rtol=2e-5,
                                       atol=1e-7)


def test_causal_mask_recorded_without_a_transformers_mask(tok):
    """transformers hands SDPA no mask for a plain causal run; the recorded mask is still
    each layer's causal future."""
    model = _model("llama", tok)
    run = attnmap.capture(LONG_TEXT, model=model, tokenizer=tok, store="qk")
    n = len(run.tokens)
    assert run.causal
    assert np.array_equal(run.mask(0), np.triu(np.ones((n, n), bool), 1))


# --- the allocator: a capture leaves glibc's settings as it found them ------------------

class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def mallopt(self, param: int, value: int) -> int:
        with self.lock:
            self.calls.append(("mallopt", value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        with self.lock:
            self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(_qk, "_libc", lambda: fake)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return fake


def test_qk_capture_releases_memory_but_sets_no_threshold(tok, libc):
    model = _model("llama", tok)
    attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    # after each layer and once at the end
    assert libc.calls == [("trim", 0)] * (model.config.num_hidden_layers + 1)


def test_fixed_threshold_is_set_once_and_set_back_by_the_last_user(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    inside = threading.Barrier(2)
    done = threading.Event()

    def other() -> None:
        with _qk.fixed_mmap_threshold():
            inside.wait()
            done.wait()

    t = threading.Thread(target=other)
    with _qk.fixed_mmap_threshold():
        t.start()
        inside.wait()
        with _qk.fixed_mmap_threshold():  # nested in this thread
            pass
        assert libc.calls == [("mallopt", 1 << 20)]  # the others are still inside
    assert libc.calls == [("mallopt", 1 << 20)]  # the other thread still is
    done.set()
    t.join()
    assert libc.calls == [("mallopt", 1 << 20), ("trim", 0), ("mallopt", 262144)]
    libc.calls.clear()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    with pytest.raises(RuntimeError):
        with _qk.fixed_mmap_threshold():
            raise RuntimeError("boom")
    assert libc.calls == [("mallopt", 1 << 20), ("trim", 0),
                          ("mallopt", _qk.GLIBC_MMAP_THRESHOLD)]
