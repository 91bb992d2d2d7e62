"""The viewer's binary payload: round trips, the error bound, masks, Python ↔ JS agreement."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.viewer import html as html_mod
from attnmap.viewer import payload as P

JS = Path(P.__file__).parent / "static" / "viewer.js"


def _softmax_layers(rng, n_layers, heads, q, k, masked):
    out = []
    for _ in range(n_layers):
        logits = rng.normal(scale=3.0, size=(heads, q, k)).astype(np.float32)  # [head, query, key]
        logits[:, masked] = -np.inf
        e = np.exp(logits - logits.max(axis=2, keepdims=True))
        out.append((e / e.sum(axis=2, keepdims=True)).astype(np.float32))
    return out


def _tokens(words, special=()):
    return [Token(text=w, raw=w, id=i, special=i in special) for i, w in enumerate(words)]


def causal_run(n=9, layers=3, heads=4, seed=0):
    rng = np.random.default_rng(seed)
    masked = np.triu(np.ones((n, n), dtype=bool), k=1)  # [query, key]
    words = ["<s>", "The", "␣cat", "␣sat", "⏎", "</script>", "a⟨U+2028⟩b", "\"'`", "."][:n]
    words += [f"t{i}" for i in range(len(words), n)]
    return AttentionRun(
        text="The cat sat",
        tokens=_tokens(words, special={0}),
        stacks={"self": AttentionStack("self", _softmax_layers(rng, layers, heads, n, n, masked),
                                       masked)},
        model={"id": "tiny-causal", "layers": layers, "heads": heads, "causal": True},
    )


def seq2seq_run(n=6, m=4, layers=2, heads=3, seed=1):
    rng = np.random.default_rng(seed)
    none_nn, none_mn = np.zeros((n, n), bool), np.zeros((m, n), bool)
    causal_m = np.triu(np.ones((m, m), dtype=bool), k=1)

    def stack(name, q, k, masked):
        return AttentionStack(name, _softmax_layers(rng, layers, heads, q, k, masked), masked)

    return AttentionRun(
        text="a b c d", tokens=_tokens([f"s{i}" for i in range(n)], special={n - 1}),
        stacks={
            "encoder": stack("encoder", n, n, none_nn),
            "decoder": stack("decoder", m, m, causal_m),
            "cross": stack("cross", m, n, none_mn),
        },
        model={"id": "tiny-s2s", "architecture": "encoder-decoder", "causal": False},
        target_text="w x y", target_tokens=_tokens([f"d{i}" for i in range(m)], special={0}),
    )


def _check_layer(run, stack, li, chunk):
    st = run.stack(stack)
    ref = run.layer(li, stack)  # [head, query, key]
    assert chunk["stack"] == stack and chunk["layer"] == li
    assert chunk["shape"] == list(ref.shape)
    assert chunk["values"].dtype == np.float32 and chunk["values"].shape == ref.shape
    # Masked cells come back as masked, and only those.
    np.testing.assert_array_equal(chunk["masked"], np.broadcast_to(st.masked, ref.shape))
    row_max = np.where(st.masked[None], 0, ref).max(axis=2, keepdims=True)  # [head, query, 1]
    err = np.abs(np.where(st.masked[None], 0, ref) - chunk["values"])
    assert np.all(err <= row_max / 255 + 1e-7), float((err / np.maximum(row_max, 1e-9)).max())
    # Each row's peak survives exactly (it is the scale).
    np.testing.assert_array_equal(chunk["values"].max(axis=2), row_max[..., 0])


def test_round_trip_causal_all_layers():
    run = causal_run()
    d = P.decode(P.encode(run))
    assert d["version"] == P.PAYLOAD_VERSION == 1
    assert sorted(d["layers"]) == [("self", i) for i in range(3)]
    for i in range(3):
        _check_layer(run, "self", i, d["layers"][("self", i)])


def test_header_carries_tokens_as_data():
    run = causal_run()
    head = P.decode(P.encode(run))["header"]
    (s,) = head["stacks"]
    assert s["name"] == "self" and s["shape"] == [3, 4, 9, 9]
    assert s["query_tokens"] == s["key_tokens"] == [t.text for t in run.tokens]
    assert s["query_special"] == [True] + [False] * 8
    assert s["masked_cells"] == 36
    assert head["text"] == "The cat sat" and head["model"]["id"] == "tiny-causal"
    assert head["included"] == [["self", 0], ["self", 1], ["self", 2]]
    assert [c["layer"] for c in head["chunks"]] == [0, 1, 2]


def test_masked_differs_from_zero():
    run = causal_run(n=4, layers=1, heads=1)
    w = run.stacks["self"].layers[0]
    w[0, 3, 1] = 0.0  # a real zero where the query may look
    w[0, 3] /= w[0, 3].sum()
    chunk = P.decode_layer(P.encode_layer(run, "self", 0))
    assert chunk["codes"][0, 3, 1] == 0 and not chunk["masked"][0, 3, 1]
    assert chunk["codes"][0, 0, 1] == P.MASKED and chunk["masked"][0, 0, 1]


def test_header_only_and_subsets():
    run = seq2seq_run()
    blob = P.encode(run, layers="none")
    d = P.decode(blob)
    assert d["layers"] == {} and d["header"]["chunks"] == []
    assert [s["name"] for s in d["header"]["stacks"]] == ["encoder", "decoder", "cross"]
    cross = d["header"]["stacks"][2]
    assert cross["shape"] == [2, 3, 4, 6]
    assert cross["query_tokens"] == [t.text for t in run.target_tokens]
    assert cross["key_tokens"] == [t.text for t in run.tokens]
    sub = P.decode(P.encode(run, layers=[-1]))
    assert sorted(sub["layers"]) == [("cross", 1), ("decoder", 1), ("encoder", 1)]
    _check_layer(run, "cross", 1, sub["layers"][("cross", 1)])
    _check_layer(run, "decoder", 1, sub["layers"][("decoder", 1)])


def test_layer_chunk_is_the_same_bytes_as_in_the_payload():
    run = seq2seq_run()
    blob = P.encode(run)
    chunk = P.encode_layer(run, "cross", 1)
    assert chunk in blob
    assert P.decode_layer(chunk)["size"] == len(chunk)
    # Negative layer numbers resolve, and the chunk names the resolved one.
    assert P.encode_layer(run, "cross", -1) == chunk


@pytest.mark.parametrize("bad, message", [
    (lambda b: b"XXXX" + b[4:], "not an attnmap payload"),
    (lambda b: b[:4] + struct.pack("<I", 99) + b[8:], "newer than this attnmap"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b + b"junk", "after its last layer"),
])
def test_bad_payloads_are_refused(bad, message):
    with pytest.raises(AttnmapError, match=message):
        P.decode(bad(P.encode(causal_run(n=3, layers=1, heads=1))))


def test_bad_arguments():
    run = causal_run(n=3, layers=2, heads=1)
    with pytest.raises(AttnmapError, match="layer must be in 0..1"):
        P.encode_layer(run, "self", 2)
    with pytest.raises(AttnmapError, match="no 'cross' attention"):
        P.encode_layer(run, "cross", 0)
    with pytest.raises(AttnmapError, match="layers must be"):
        P.encode(run, layers="some")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_quantise_error_bound(heads, q, k, seed):
    rng = np.random.default_rng(seed)
    w = rng.random((heads, q, k), dtype=np.float32) ** 4  # [head, query, key]
    masked = rng.random((q, k)) < 0.3  # [query, key]
    scales, codes = P.quantise(w, masked)
    vals = codes.astype(np.float32) * (scales[..., None] / P.LEVELS)
    ref = np.where(masked[None], 0, w)
    assert np.all((codes == P.MASKED) == masked[None])
    assert np.all(np.abs(np.where(masked[None], 0, vals) - ref) <= scales[..., None] / 255 + 1e-7)


# --- Python and the JS module agree --------------------------------------------------------
def _js_const(name: str) -> str:
    pattern = rf"^(?:export )?(?:const|var|let) {name} = (.+?);(?:\s*//.*)?$"
    m = re.search(pattern, JS.read_text("utf-8"), re.MULTILINE)
    assert m, f"viewer.js defines no {name}"
    return m.group(1)


def test_payload_version_agrees_with_viewer_js():
    assert int(_js_const("PAYLOAD_VERSION")) == P.PAYLOAD_VERSION


def test_codes_and_alphabet_agree_with_viewer_js():
    assert int(_js_const("LEVELS").split()[0]) == P.LEVELS
    assert int(_js_const("MASKED").split()[0]) == P.MASKED
    assert _js_const("B85").strip('"') == html_mod.B85


def _b85decode_reference(text: str, length: int) -> bytes:
    out = bytearray()
    for g in range(0, len(text), 5):
        v = 0
        for ch in text[g : g + 5]:
            v = v * 85 + html_mod.B85.index(ch)
        out += v.to_bytes(4, "big")
    return bytes(out[:length])


@pytest.mark.parametrize("data", [b"", b"\0", b"\xff" * 7, bytes(range(256)) * 3])
def test_b85_round_trip(data):
    text = html_mod.b85encode(data)
    assert len(text) == 5 * ((len(data) + 3) // 4)
    assert not set(text) & set("<>&\"'\\`")
    assert _b85decode_reference(text, len(data)) == data


# --- the widget's transport ------------------------------------------------------------------
def test_widget_state_is_binary_and_uses_the_same_module():
    pytest.importorskip("anywidget")
    from ipywidgets.widgets.widget import _remove_buffers

    from attnmap.viewer import show

    run = causal_run()
    w = show(run, layer=-1, head="mean", scale="log")
    assert w.payload == P.encode(run)
    assert w.options == {"layer": 2, "head": "mean", "scale": "log"}
    assert w._esm == JS.read_text("utf-8")
    assert w._css == (JS.parent / "viewer.css").read_text("utf-8")
    state, paths, buffers = _remove_buffers(w.get_state())
    assert ["payload"] in paths  # sent as a binary buffer, not base64 text
    assert bytes(buffers[paths.index(["payload"])]) == P.encode(run)
    with pytest.raises(AttnmapError, match="head must be in 0..3"):
        show(run, head=4)
    with pytest.raises(TypeError, match="colour"):  # explicit keywords: a typo is refused
        show(run, colour="red")


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 1), (2, 0, 4), (2, 4, 0), (4, 9, 9)])
def test_quantise_matches_its_definition(shape):
    """Row scale = the largest visible value (NaN, ±inf and negatives count as 0); code =
    round(value / scale · 128); masked cells 255."""
    rng = np.random.default_rng(sum(shape))
    w = rng.normal(size=shape)
    if w.size:
        w.flat[0], w.flat[-1] = np.nan, np.inf
    masked = rng.random(shape[1:]) < 0.3
    scales, codes = P.quantise(w, masked)
    clean = np.where(np.isfinite(w) & (w > 0) & ~masked[None], w, 0).astype(np.float32)
    want_scales = clean.max(axis=2) if shape[2] else np.zeros(shape[:2], np.float32)
    np.testing.assert_array_equal(scales, want_scales)
    safe = np.where(want_scales > 0, want_scales, 1)[:, :, None]
    want = np.rint(clean * (np.float32(128) / safe)).astype(np.uint8)
    want[np.broadcast_to(masked[None], want.shape)] = 255
    np.testing.assert_array_equal(codes, want)
