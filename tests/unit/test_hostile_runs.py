"""Hand-made run files: anything `attnmap.load` cannot use is one AttnmapError line, never a
traceback or a hang; the plots and the page refuse what they could only draw as nothing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import attnmap
from attnmap import AttentionRun, AttentionStack, AttnmapError, Token, plot
from attnmap.run import MAX_HEADS, MAX_LAYERS
from attnmap.viewer.payload import captured_text, decode, encode


def _run(n: int = 3, layers: int = 2, heads: int = 2) -> AttentionRun:
    masked = np.triu(np.ones((n, n), bool), 1)
    a = np.where(masked, 0, 1.0).astype(np.float32)
    a = a / a.sum(-1, keepdims=True)  # [query, key]
    ls = [np.repeat(a[None], heads, 0) for _ in range(layers)]  # each [head, query, key]
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i, start=2 * i, end=2 * i + 1) for i in range(n)]
    return AttentionRun(text=" ".join("abcdefgh"[:n]), tokens=toks,
                        stacks={"self": AttentionStack("self", ls, masked)},
                        model={"id": "toy", "causal": True, "architecture": "decoder"})


def _parts(run: AttentionRun, tmp_path) -> tuple[dict, dict]:
    path = run.save(tmp_path / "valid.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["attnmap"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def _write(tmp_path, meta: dict | str, tensors: dict, name: str = "bad.safetensors"):
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    path = tmp_path / name
    save_file(tensors, str(path), metadata={"attnmap": raw})
    return path


def _refused(path, *words: str) -> str:
    with pytest.raises(AttnmapError) as info:
        attnmap.load(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture
def parts(tmp_path):
    return _parts(_run(), tmp_path)


def test_token_id_that_is_no_integer(tmp_path, parts):
    meta, tensors = parts
    raw = json.dumps(meta).replace('"id": 0', '"id": 1e999', 1)  # JSON's way to say inf
    assert "1e999" in raw
    _refused(_write(tmp_path, raw, tensors), "token_info[0].id", "integer")
    for bad in (1.5, "3", None, True):
        meta["token_info"][1]["id"] = bad
        _refused(_write(tmp_path, meta, tensors), "token_info[1].id")


def test_token_fields_of_the_wrong_type(tmp_path, parts):
    meta, tensors = parts
    for field, bad in (("text", 5), ("raw", ["x"]), ("start", "0"), ("special", "yes")):
        m = json.loads(json.dumps(meta))
        m["token_info"][0][field] = bad
        _refused(_write(tmp_path, m, tensors), f"token_info[0].{field}")
    m = json.loads(json.dumps(meta))
    m["token_info"] = "abc"
    _refused(_write(tmp_path, m, tensors), "token_info must be a list")
    m["token_info"] = [1, 2, 3]
    _refused(_write(tmp_path, m, tensors), "token_info[0] must be an object")
    m = json.loads(json.dumps(meta))
    m["text"] = 12
    _refused(_write(tmp_path, m, tensors), "text must be a string")


def test_lone_surrogates_in_a_token_or_the_text(tmp_path, parts):
    meta, tensors = parts
    raw = json.dumps(meta)
    tok = raw.replace('"text": "t1"', '"text": "t\\ud800"', 1)
    assert tok != raw
    _refused(_write(tmp_path, tok, tensors), "surrogate", "token_info[1].text")
    txt = raw.replace('"text": "a b c"', '"text": "a \\udfff c"', 1)
    assert txt != raw
    _refused(_write(tmp_path, txt, tensors), "surrogate", "text")


def test_no_tokens_or_no_heads(tmp_path, parts):
    meta, tensors = parts
    empty = {**meta, "token_info": [], "tokens": []}
    t0 = {k: (np.zeros((2, 0, 0), np.float32) if k.startswith("layer") else
              np.zeros((0, 0), np.uint8)) for k in tensors}
    _refused(_write(tmp_path, empty, t0), "no tokens")
    no_heads = {k: (v[:0] if k.startswith("layer") else v) for k, v in tensors.items()}
    _refused(_write(tmp_path, meta, no_heads), "0 heads")


def _qk_parts(tmp_path, heads: int = 2, kv: int = 1) -> tuple[dict, dict]:
    meta, tensors = _parts(_run(), tmp_path)
    n = len(meta["token_info"])
    tensors = {"mask": tensors["mask"]}
    for i in range(2):
        tensors[f"q.layer.{i}"] = np.ones((heads, n, 4), np.float32)  # [head, query, dim]
        tensors[f"k.layer.{i}"] = np.ones((kv, n, 4), np.float32)  # [kv_head, key, dim]
    meta["format_version"] = 2
    meta["stacks"]["self"].update(storage="qk", scaling=[0.5, 0.5])
    return meta, tensors


def test_qk_files_good_and_bad(tmp_path):
    meta, tensors = _qk_parts(tmp_path)
    run = attnmap.load(_write(tmp_path, meta, tensors, "good.safetensors"))
    assert run.stack().lazy and run.attention.shape == (2, 2, 3, 3)

    no_kv = {k: (v[:0] if k.startswith("k.") else v) for k, v in tensors.items()}
    _refused(_write(tmp_path, meta, no_kv), "keys have 0 heads")
    for bad in (["x", "y"], [None, 1.0], [True, 1.0], "0.5", [0.5]):
        m = json.loads(json.dumps(meta))
        m["stacks"]["self"]["scaling"] = bad
        _refused(_write(tmp_path, m, tensors), "scaling")
    raw = json.dumps(meta).replace('"scaling": [0.5, 0.5]', '"scaling": [1e999, 0.5]')
    _refused(_write(tmp_path, raw, tensors), "scaling", "finite")
    m = json.loads(json.dumps(meta))
    m["stacks"]["self"]["softcap"] = [0, 30.0]
    _refused(_write(tmp_path, m, tensors), "softcap")
    odd_dim = {**tensors, "k.layer.1": np.ones((1, 3, 5), np.float32)}
    _refused(_write(tmp_path, meta, odd_dim), "do not fit")
    ints = {**tensors, "q.layer.0": np.ones((2, 3, 4), np.int32)}
    _refused(_write(tmp_path, meta, ints), "floats")


def test_mask_numbers_out_of_range(tmp_path, parts):
    meta, tensors = parts
    t = {k: v for k, v in tensors.items() if k != "mask"}
    t["mask.0"] = tensors["mask"]
    meta["format_version"] = 3
    for bad, word in (([0, 7], "mask the file does not hold"), ([0, -1], "layer_masks"),
                      ([0, 0.5], "layer_masks")):
        meta["stacks"]["self"]["layer_masks"] = bad
        _refused(_write(tmp_path, meta, t), word)


PRED = {"position": 0, "token": "t0", "top": [{"token": "t1", "p": 0.5}],
        "next": {"token": "t1", "p": 0.5, "rank": 1, "surprisal": 1.0}}


@pytest.mark.parametrize("preds, word", [
    ("abc", "predictions must be a list"),
    ([5], "record 0 must be an object"),
    ([{**PRED, "position": "0"}], "position"),
    ([{**PRED, "top": [{"token": "t1", "p": "0.5"}]}], "top[0].p"),
    ([{**PRED, "top": []}], "top must be a non-empty list"),
    ([{**PRED, "next": {"token": "t1", "p": 0.5, "rank": "1"}}], "next.rank"),
    ([{**PRED, "token": None}], "token"),
])
def test_wrongly_typed_predictions(tmp_path, parts, preds, word):
    meta, tensors = parts
    meta["extra"] = {"predictions": preds, "predictions_kind": "next-token"}
    meta["format_version"] = 2
    _refused(_write(tmp_path, meta, tensors), "predictions", word)
    meta["extra"]["predictions"] = [PRED]  # the same file with good predictions loads
    assert attnmap.load(_write(tmp_path, meta, tensors, "ok.safetensors")).predictions == [PRED]


def test_too_many_layers_or_heads_refused_quickly(tmp_path, parts):
    meta, tensors = parts
    layer, mask = tensors["layer.0"], tensors["mask"]
    many = {"mask": mask, **{f"layer.{i}": layer for i in range(3000)}}
    t = time.perf_counter()
    msg = _refused(_write(tmp_path, meta, many), "3,000 layers", f"at most {MAX_LAYERS:,}")
    assert "inconsistent" not in msg
    wide = {"mask": mask, "layer.0": np.ones((5000, 3, 3), np.float32)}
    _refused(_write(tmp_path, meta, wide, "wide.safetensors"), "5,000 heads",
             f"at most {MAX_HEADS:,}")
    assert time.perf_counter() - t < 60  # not a timing claim: only "does not run for minutes"


def test_json_that_is_not_an_object_or_not_json(tmp_path, parts):
    _, tensors = parts
    for raw in ("[1, 2]", "nope", '{"format_version": "2"}', '{"format_version": 1e999}',
                "[" * 100_000):
        with pytest.raises(AttnmapError) as info:
            attnmap.load(_write(tmp_path, raw, tensors))
        assert "\n" not in str(info.value)


def _mem(layers: int, heads: int, n: int = 2) -> AttentionRun:
    a = np.full((layers, heads, n, n), 1 / n, np.float32)  # [layer, head, query, key]
    return attnmap.from_arrays(a, tokens=[f"t{i}" for i in range(n)])


def test_plots_refuse_figures_that_would_take_minutes():
    with pytest.raises(AttnmapError, match=r"at most 256 heads \(this layer has 300\)"):
        plot.grid(_mem(1, 300), 0)
    with pytest.raises(AttnmapError, match=r"at most 512 layers.*600 layers × 1 heads"):
        plot.overview(_mem(600, 1))
    with pytest.raises(AttnmapError, match=r"16,384 panels.*200 layers × 100 heads"):
        plot.overview(_mem(200, 100))


def test_page_refuses_empty_runs_and_bad_predictions():
    run = _run()
    empty = AttentionRun(text="", tokens=[], model=run.model, stacks={
        "self": AttentionStack("self", [np.zeros((2, 0, 0), np.float32)],
                               np.zeros((0, 0), bool))})
    with pytest.raises(AttnmapError, match="no tokens"):
        attnmap.to_html(empty)
    no_heads = AttentionRun(text="a", tokens=run.tokens, model=run.model, stacks={
        "self": AttentionStack("self", [np.zeros((0, 3, 3), np.float32)],
                               np.zeros((3, 3), bool))})
    with pytest.raises(AttnmapError, match="no heads"):
        attnmap.to_html(no_heads)
    bad = AttentionRun(text=run.text, tokens=run.tokens, stacks=run.stacks, model=run.model,
                       extra={"predictions": [{**PRED, "top": [{"token": "x", "p": "0.9"}]}],
                              "predictions_kind": "next-token"})
    with pytest.raises(AttnmapError, match=r"predictions: record 0's top\[0\]\.p"):
        attnmap.to_html(bad)


def test_page_embeds_only_the_captured_text():
    """A run of a truncated input keeps the input; the page carries what its tokens cover
    (and so the viewer lists the words of 5 characters, not of 600,000)."""
    long = "a b c " + "lorem ipsum " * 50_000
    base = _run()
    run = AttentionRun(text=long, tokens=base.tokens, stacks=base.stacks, model=base.model)
    html = attnmap.to_html(run, layer=1, head=1)
    assert len(html) < 200_000 and "lorem" not in html
    assert '<script type="application/json" id="attnmap-options">{"layer": 1, "head": 1}' in html
    assert decode(encode(run, layers="none"))["header"]["text"] == "a b c"
    assert captured_text("a b c  \n", base.tokens) == "a b c  \n"  # only white space after
    assert captured_text("xyz", [Token("x", "x", 0)]) == "xyz"  # no offsets: kept as it is
