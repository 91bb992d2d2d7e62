"""attnmap.from_arrays: attention from any framework becomes a run.

The unit-level tests always run. The recipes in docs/frameworks.md are executed as written
(TransformerLens, nnsight, JAX, numpy); the framework ones skip when the package is not
installed (``pip install -e '.[frameworks]'``) and must equal ``attnmap.capture`` of the same
tiny model within 1e-5.
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import numpy as np
import pytest

import attnmap
from attnmap import AttnmapError, Token

TEXT = "When Mary and John went to the store, John gave a drink to Mary."
DOC = Path(__file__).resolve().parents[2] / "docs" / "frameworks.md"


def _softmax(scores: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
    """Row softmax over the last axis; `hidden` cells ([query, key], True) get exactly 0."""
    if hidden is not None:
        scores = np.where(hidden, -np.inf, scores)
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)


def _weights(layers=2, heads=3, n=5, causal=True, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hidden = np.triu(np.ones((n, n), bool), 1) if causal else None
    return _softmax(rng.normal(size=(layers, heads, n, n)), hidden)  # [layer, head, q, k]


PIECES = ["The", "Ġcat", "Ġsat", "Ġdown", "."]


def _error(match: str, *args, **kwargs) -> str:
    with pytest.raises(AttnmapError, match=match) as info:
        attnmap.from_arrays(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


# --- shapes ------------------------------------------------------------------------------


def test_every_accepted_shape_gives_the_same_run():
    import torch

    a = _weights()  # [layer, head, q, k]
    forms = [
        a,
        a.tolist(),
        list(a),  # one [head, q, k] per layer
        tuple(torch.from_numpy(x)[None] for x in a),  # Hugging Face's output.attentions
        [x[None] for x in a],  # numpy, batch of one
    ]
    for form in forms:
        run = attnmap.from_arrays(form, PIECES)
        assert run.attention.shape == (2, 3, 5, 5) and run.attention.dtype == np.float32
        np.testing.assert_array_equal(run.attention, a)
        assert (run.n_layers, run.n_heads) == (2, 3)
    one = attnmap.from_arrays(a[1], PIECES)  # a single layer's [head, q, k]
    assert one.n_layers == 1
    np.testing.assert_array_equal(one.layer(0), a[1])


def test_the_run_does_not_alias_the_callers_array():
    a = _weights()
    run = attnmap.from_arrays(a, PIECES)
    a[:] = 0
    assert run.attention.max() > 0


def test_shape_errors():
    a = _weights()
    msg = _error("batch of 2", [np.stack([x, x]) for x in a], PIECES)
    assert "pick one" in msg
    _error("5 axes", a[:, None], PIECES)
    _error("2 axes", a[0, 0], PIECES)
    _error(r"layer 0 has shape \(5, 5\)", [a[0, 0]], PIECES)
    _error("same", [a[0], a[1][:2]], PIECES)
    _error("no layers", np.zeros((0, 3, 5, 5), np.float32), PIECES)
    _error("rectangular", [[[0.5, 0.5], [1.0]]], ["a", "b"])
    cross = _softmax(np.zeros((1, 2, 3, 4)))
    assert "cross-attention" in _error("3 queries and 4 keys", cross, ["a", "b", "c"])
    _error("4 tokens for attention over 5 positions", a, PIECES[:4])
    _error("real numbers", np.ones((1, 1, 2, 2), dtype=bool), ["a", "b"])


# --- precision and frameworks' arrays ----------------------------------------------------


def test_torch_tensors_half_precision_and_gradients():
    import torch

    a = torch.tensor(_weights(), requires_grad=True)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = a.to(dtype)
        run = attnmap.from_arrays(t, PIECES)
        assert run.attention.dtype == np.float32
        np.testing.assert_array_equal(run.attention, t.detach().float().numpy())
        assert run.causal  # the future is exactly 0 in every precision


def test_half_precision_rows_may_round_past_one():
    # three equal weights in bfloat16 are 0.3340 each: the row sums to 1.002
    import torch

    third = torch.full((1, 1, 3, 3), 1 / 3).to(torch.bfloat16)
    assert float(third.float().sum(-1).max()) > 1.001
    run = attnmap.from_arrays(third, ["a", "b", "c"])
    assert not run.causal
    # the same sum in float32 is a mistake
    _error("sums to 1.002", third.float(), ["a", "b", "c"])


def test_float16_numpy_becomes_float32():
    run = attnmap.from_arrays(_weights().astype(np.float16), PIECES)
    assert run.attention.dtype == np.float32


def test_jax_arrays_including_bfloat16():
    jnp = pytest.importorskip("jax.numpy")
    import jax

    scores = np.random.default_rng(0).normal(size=(2, 4, 4))
    weights = jax.nn.softmax(jnp.asarray(scores), axis=-1)
    run = attnmap.from_arrays(weights, ["a", "b", "c", "d"])
    np.testing.assert_allclose(run.layer(0), _softmax(scores), atol=1e-6)
    run16 = attnmap.from_arrays(weights.astype(jnp.bfloat16), ["a", "b", "c", "d"])
    np.testing.assert_allclose(run16.layer(0), _softmax(scores), atol=4e-3)


# --- values ------------------------------------------------------------------------------


def test_value_errors_name_the_place():
    a = _weights(causal=False)
    bad = a.copy()
    bad[1, 2, 3, 0] = np.nan
    assert "layer 1, head 2, query 3, key 0" in _error("NaN or inf", bad, PIECES)
    bad = a.copy()
    bad[0, 1, 2, 4] = np.inf
    _error("NaN or inf", bad, PIECES)
    bad = a.copy()
    bad[0, 0, 1, 1] = -0.25
    assert "layer 0, head 0, query 1, key 1" in _error("negative", bad, PIECES)
    scores = np.random.default_rng(1).normal(size=(1, 2, 5, 5)) + 3  # raw scores, not weights
    _error("row sums to", np.abs(scores), PIECES)


def test_rows_may_sum_below_one():
    # attention sinks (gpt-oss) keep part of each row off the tokens
    a = _weights() * 0.7
    run = attnmap.from_arrays(a, PIECES)
    np.testing.assert_allclose(run.attention.sum(-1), 0.7, rtol=1e-5)
    tiny_negative = a.copy()
    tiny_negative[0, 0, 4, 0] = -1e-8  # rounding noise is not an error
    attnmap.from_arrays(tiny_negative, PIECES)


# --- causal and masks --------------------------------------------------------------------


def test_causal_inferred_from_zeros_above_the_diagonal():
    future = np.triu(np.ones((5, 5), bool), 1)
    run = attnmap.from_arrays(_weights(causal=True), PIECES)
    assert run.causal and run.model["architecture"] == "decoder"
    np.testing.assert_array_equal(run.masked, future)
    run = attnmap.from_arrays(_weights(causal=False), PIECES)
    assert not run.causal and run.model["architecture"] == "encoder"
    assert not run.masked.any()
    # one head of one layer looking ahead is enough to make it not causal
    a = _weights(causal=True)
    a[1, 2, 0] = 0.2  # row 0 of layer 1, head 2: spread over all five keys
    assert not attnmap.from_arrays(a, PIECES).causal
    assert not attnmap.from_arrays(_weights(n=1), ["a"]).causal  # one token: nothing to tell


def test_causal_given():
    causal = _weights(causal=True)
    run = attnmap.from_arrays(causal, PIECES, causal=False)
    assert not run.causal and not run.masked.any()
    msg = _error("masked cell holds attention", _weights(causal=False), PIECES, causal=True)
    assert "causal=False" in msg
    _error("causal must be", causal, PIECES, causal="yes")


def test_masks_shared_and_per_layer():
    n = 5
    pos = np.arange(n)
    future = pos[None, :] > pos[:, None]  # [query, key]
    window = future | (pos[None, :] <= pos[:, None] - 2)  # two keys per query
    rng = np.random.default_rng(2)
    a = np.stack([_softmax(rng.normal(size=(3, n, n)), window),
                  _softmax(rng.normal(size=(3, n, n)), future)])  # [layer, head, q, k]
    run = attnmap.from_arrays(a, PIECES, mask=np.stack([window, future]))
    np.testing.assert_array_equal(run.mask(0), window)
    np.testing.assert_array_equal(run.mask(1), future)
    assert run.causal and run.model["layer_masks"] == [0, 1]
    with pytest.raises(AttnmapError, match="run.mask"):
        _ = run.masked  # layers differ: ask per layer
    # one [query, key] mask for every layer; 0/1 integers work as booleans
    same = np.stack([_softmax(rng.normal(size=(3, n, n)), window)] * 2)
    run = attnmap.from_arrays(same, PIECES, mask=window.astype(np.int8))
    np.testing.assert_array_equal(run.masked, window)
    # a mask is checked against the weights, and against causal when both are given
    assert "fix the mask" in _error("masked cell holds attention", a, PIECES, mask=window)
    _error("the mask lets queries see later keys", _weights(causal=False), PIECES,
           mask=np.zeros((n, n), bool), causal=True)
    _error("additive mask", same, PIECES, mask=np.where(window, -np.inf, 0.0))
    _error(r"mask of shape \(3, 5, 5\)", same, PIECES, mask=np.stack([window] * 3))


def test_torch_bool_mask():
    import torch

    future = np.triu(np.ones((5, 5), bool), 1)
    run = attnmap.from_arrays(_weights(), PIECES, mask=torch.from_numpy(future))
    np.testing.assert_array_equal(run.masked, future)


# --- tokens and text ---------------------------------------------------------------------


def test_byte_level_pieces_become_readable_labels_and_text():
    run = attnmap.from_arrays(_weights(n=6), ["<|endoftext|>", "The", "Ġcat", "Ċ", "Ġsat", "."])
    assert [t.text for t in run.tokens] == ["<|endoftext|>", "The", "␣cat", "⏎", "␣sat", "."]
    assert [t.special for t in run.tokens] == [True] + [False] * 5
    assert run.text == "The cat\n sat."
    spans = [(t.start, t.end) for t in run.tokens]
    assert spans == [(None, None), (0, 3), (4, 7), (7, 8), (9, 12), (12, 13)]
    assert all(t.id == -1 for t in run.tokens)  # strings carry no vocabulary id


def test_other_alphabets():
    run = attnmap.from_arrays(_weights(n=5), ["▁The", "▁cat", "s", "<0x0A>", "▁sat"])
    assert [t.text for t in run.tokens][:3] == ["␣The", "␣cat", "s"]
    assert run.text == "The cats\n sat"
    assert run.tokens[4].start == run.text.index("sat")
    run = attnmap.from_arrays(_weights(n=5, causal=False), ["[CLS]", "the", "cat", "##s", "[SEP]"])
    assert [t.text for t in run.tokens] == ["[CLS]", "the", "cat", "##s", "[SEP]"]
    assert run.text == "the cats" and [t.special for t in run.tokens] == [1, 0, 0, 0, 1]
    assert (run.tokens[3].start, run.tokens[3].end) == (7, 8)
    # decoded strings (TransformerLens's to_str_tokens): spaces shown, text concatenated
    run = attnmap.from_arrays(_weights(n=3), ["The", " cat", "\t"])
    assert [t.text for t in run.tokens] == ["The", "␣cat", "⇥"] and run.text == "The cat\t"
    # an empty piece still gets a visible label
    assert attnmap.from_arrays(_weights(n=2), ["a", ""]).tokens[1].text == "∅"


def test_markup_in_tokens_is_kept_as_text():
    hostile = ["</script><script>x</script>", "<img src=x onerror=y>", "Ġ<b>"]
    run = attnmap.from_arrays(_weights(n=3), hostile)
    assert [t.raw for t in run.tokens] == hostile
    assert run.tokens[2].text == "␣<b>" and not any(t.special for t in run.tokens)


def test_text_given_finds_each_token():
    text = "The cat  sat down."
    run = attnmap.from_arrays(_weights(), PIECES, text=text)
    assert run.text == text
    assert [text[t.start:t.end] for t in run.tokens] == ["The", "cat", "sat", "down", "."]
    # a piece the text does not hold has no span, the others still do
    run = attnmap.from_arrays(_weights(), ["The", "Ġdog", "Ġsat", "Ġdown", "."], text=text)
    assert run.tokens[1].start is None and run.tokens[4].start == len(text) - 1


def test_token_objects_pass_through():
    toks = [Token(text=f"w{i}", raw=f"w{i}", id=10 + i, special=i == 0) for i in range(5)]
    run = attnmap.from_arrays(_weights(), toks)
    assert [t.id for t in run.tokens] == [10, 11, 12, 13, 14]
    assert run.tokens[0].special and run.tokens[1].start is not None
    with_spans = [Token(text="a", raw="a", id=1, start=0, end=1)] * 5
    _error("offsets but no text", _weights(), with_spans)
    _error("outside the text", _weights(), with_spans, text="")
    assert attnmap.from_arrays(_weights(), with_spans, text="a").tokens[0].end == 1


def test_token_errors():
    _error("token 2 is a int.*convert_ids_to_tokens", _weights(), ["a", "b", 3, "d", "e"])
    _error("list of strings", _weights(n=1), "a")
    _error("text must be a string", _weights(), PIECES, text=b"abc")


# --- model facts -------------------------------------------------------------------------


def test_model_facts():
    run = attnmap.from_arrays(_weights(), PIECES, model="gpt2")
    assert run.model["id"] == "gpt2"
    assert (run.model["layers"], run.model["heads"], run.model["causal"]) == (2, 3, True)
    run = attnmap.from_arrays(_weights(), PIECES, model={"id": "mine", "dtype": "bfloat16",
                                                         "layers": 2})
    assert run.model["dtype"] == "bfloat16" and run.model["layers"] == 2
    assert attnmap.from_arrays(_weights(), PIECES).model["id"] == "arrays"
    _error("model says heads=12 but the attention has 3", _weights(), PIECES,
           model={"id": "x", "heads": 12})
    _error("plain JSON", _weights(), PIECES, model={"id": "x", "f": object()})
    _error("id string or a dict", _weights(), PIECES, model=3)


# --- every output works on the run -------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    pos = np.arange(5)
    future = pos[None, :] > pos[:, None]
    window = future | (pos[None, :] <= pos[:, None] - 2)
    a = np.stack([_softmax(np.zeros((3, 5, 5)), window), _softmax(np.ones((3, 5, 5)), future)])
    run = attnmap.from_arrays(a, PIECES, mask=np.stack([window, future]), model="tiny")
    back = attnmap.load(run.save(tmp_path / "r.safetensors"))
    np.testing.assert_array_equal(back.attention, run.attention)
    for layer in (0, 1):
        np.testing.assert_array_equal(back.mask(layer), run.mask(layer))
    assert back.tokens == run.tokens and back.text == run.text and back.model == run.model


def test_heatmap_of_an_arrays_run():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run = attnmap.from_arrays(_weights(), PIECES, model="tiny")
    fig = attnmap.heatmap(run, layer=1, head=2, values=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["The", "␣cat", "␣sat", "␣down", "."]
    assert "tiny" in ax.get_title() and "layer 1" in ax.get_title()
    assert len(ax.texts) == 15  # values in the 15 cells a causal 5×5 matrix can see
    FigureCanvasAgg(fig).draw()
    assert len(attnmap.heatmap(run, 0, "all").axes) >= 3


def test_cli_and_analysis_read_an_arrays_run(tmp_path):
    from attnmap.cli import main

    run = attnmap.from_arrays(_weights(n=6), ["<s>", "The", "Ġcat", "Ġsat", "Ġcat", "."])
    path = run.save(tmp_path / "r.safetensors")
    out = tmp_path / "grid.png"
    assert main(["render", "--run", str(path), "--layer", "-1", "--heads", "all",
                 "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    scores = attnmap.head_scores(run)
    assert len(scores) == 2 * 3
    # the duplicate ␣cat is found by its raw piece
    assert all("duplicate_token" in s["scores"] for s in scores)
    html = attnmap.to_html(run, tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == html
    assert 'id="attnmap-payload"' in html


# --- parity with capture -----------------------------------------------------------------


def _assert_same_run(run, ref):
    assert run.attention.shape == ref.attention.shape
    np.testing.assert_allclose(run.attention, ref.attention, atol=1e-5, rtol=0)
    for layer in range(ref.n_layers):
        np.testing.assert_array_equal(run.mask(layer), ref.mask(layer))
    assert run.causal == ref.causal
    assert run.text == ref.text
    keep = [(t.text, t.special, t.start, t.end) for t in ref.tokens]
    assert [(t.text, t.special, t.start, t.end) for t in run.tokens] == keep


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    return attnmap.capture(TEXT, model=gpt2_dir)


def test_hugging_face_output_attentions_equal_capture(gpt2_dir, reference):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir, attn_implementation="eager").eval()
    ids = tok(TEXT)["input_ids"]
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    run = attnmap.from_arrays(out.attentions, tok.convert_ids_to_tokens(ids), model="tiny")
    _assert_same_run(run, reference)
    assert [t.id for t in reference.tokens] == ids


def _recipe(name: str) -> str:
    """The code block under ``<!-- recipe: name -->`` in docs/frameworks.md."""
    found = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", DOC.read_text(),
                      re.S)
    assert found, f"docs/frameworks.md has no {name} recipe"
    return found.group(1)


def _run_recipe(name: str, path: Path) -> dict:
    source, filename = _recipe(name), f"docs/frameworks.md:{name}"
    # nnsight reads a trace's `with` block back from its source: register it like a file
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"attnmap": attnmap, "path": str(path), "text": TEXT}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def test_setup_recipe_defines_what_the_others_use():
    namespace: dict = {}
    exec(compile(_recipe("setup"), "docs/frameworks.md:setup", "exec"), namespace)
    assert isinstance(namespace["path"], str) and isinstance(namespace["text"], str)


def test_transformer_lens_recipe_equals_capture(gpt2_dir, reference):
    pytest.importorskip("transformer_lens.model_bridge")
    ns = _run_recipe("transformer_lens", gpt2_dir)
    _assert_same_run(ns["run"], reference)
    assert ns["run"].model["id"] == str(gpt2_dir)


def test_nnsight_recipe_equals_capture(gpt2_dir, reference):
    pytest.importorskip("nnsight")
    ns = _run_recipe("nnsight", gpt2_dir)
    _assert_same_run(ns["run"], reference)


def test_numpy_recipe():
    ns = _run_recipe("numpy", Path("unused"))
    run, hidden = ns["run"], ns["hidden"]
    np.testing.assert_array_equal(run.masked, hidden)
    assert run.causal  # the window also hides the future
    np.testing.assert_allclose(run.attention.sum(-1), 1.0, rtol=1e-5)
    assert [t.text for t in run.tokens] == ["The", "␣cat", "␣sat", "␣down", "."]


def test_jax_recipe_equals_numpy_within_bfloat16():
    pytest.importorskip("jax")
    ns = _run_recipe("numpy", Path("unused"))
    want = ns["run"].attention
    source = _recipe("jax")
    exec(compile(source, "docs/frameworks.md:jax", "exec"), ns)
    run = ns["run"]
    np.testing.assert_array_equal(run.masked, ns["hidden"])
    np.testing.assert_allclose(run.attention, want, atol=4e-3)
    assert not np.array_equal(run.attention, want)  # it really went through bfloat16
