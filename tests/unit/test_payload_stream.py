"""The fast encoder: layers quantised straight from queries and keys, deflated head by head
into one zlib stream, and the page written piece by piece."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.qkweights import QKLayers
from attnmap.viewer import html as H
from attnmap.viewer import payload as P


def qk_run(n=37, layers=3, heads=4, kv_heads=2, window=None, softcap=None, sinks=False,
           empty_row=False, seed=0):
    rng = np.random.default_rng(seed)
    dim = 8
    q = [rng.normal(scale=2.0, size=(heads, n, dim)).astype(np.float32) for _ in range(layers)]
    k = [rng.normal(scale=2.0, size=(kv_heads, n, dim)).astype(np.float32)
         for _ in range(layers)]
    i, j = np.indices((n, n))
    mask = j > i  # causal
    if window is not None:
        mask |= j <= i - window
    if empty_row:
        mask[5] = True  # a query that sees nothing
    sink = [rng.normal(size=heads).astype(np.float32) for _ in range(layers)] if sinks else None
    layers_qk = QKLayers(q, k, [dim ** -0.5] * layers, mask, softcap=softcap, sinks=sink)
    tokens = [Token(text=f"t{x}", raw=f"t{x}", id=x) for x in range(n)]
    st = AttentionStack("self", layers_qk, mask)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks={"self": st}, model={"id": "qk-test", "causal": True})


@pytest.mark.parametrize("kw", [{}, {"window": 5}, {"softcap": 3.0}, {"sinks": True},
                                {"empty_row": True}, {"n": 1}, {"n": 300, "layers": 1}])
def test_qk_layers_quantise_as_their_weights_do(kw):
    run = qk_run(**kw)
    assert run.stack().lazy
    for li in range(run.n_layers):
        w = run.layer(li)  # [head, query, key], computed by QKLayers
        mask = np.asarray(run.mask(li), bool)
        scales, codes = P.quantise(w, mask)
        got = P.decode_layer(P.encode_layer(run, "self", li))
        # same codes up to float rounding at a half step, same row maxima
        assert np.abs(got["codes"].astype(int) - codes).max() <= 1
        assert np.count_nonzero(got["codes"] != codes) <= codes.size // 1000 + 1
        np.testing.assert_allclose(got["scales"], scales, rtol=1e-6, atol=1e-12)
        # the payload's promise: within row max / 256 (float slack), peaks exact, masks distinct
        seen = np.where(mask, 0, w)
        err = np.abs(got["values"] - seen) - got["scales"][:, :, None] / 256
        assert err.max() <= 1e-6
        assert np.array_equal(got["masked"], np.broadcast_to(mask, w.shape))
        peak = np.where(scales > 0, got["codes"].max(axis=2, where=~mask, initial=0), 128)
        assert np.all(peak == 128)


def test_weights_runs_give_the_same_codes_as_quantise():
    run = qk_run(n=50)
    stored = AttentionRun(text=run.text, tokens=run.tokens, model=run.model, stacks={
        "self": AttentionStack("self", [run.layer(i) for i in range(run.n_layers)],
                               run.masked)})
    for li in range(run.n_layers):
        scales, codes = P.quantise(stored.layer(li), stored.masked)
        got = P.decode_layer(P.encode_layer(stored, "self", li))
        np.testing.assert_array_equal(got["codes"], codes)
        np.testing.assert_array_equal(got["scales"], scales)


def test_adler32_combine_is_adler32_of_the_concatenation():
    rng = np.random.default_rng(1)
    for n1, n2 in [(0, 0), (0, 5), (7, 0), (1, 1), (1000, 70000), (65521, 65522)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert P._adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)


def test_heads_concatenate_into_one_zlib_stream():
    run = qk_run(n=64, heads=6, kv_heads=3)
    chunk = P.encode_layer(run, "self", 1)
    head, at = P._read_prefix(chunk, 0, P.LAYER_MAGIC, "layer chunk")
    body = chunk[at:]
    assert len(body) == head["length"]
    d = zlib.decompressobj()
    raw = d.decompress(body)  # a browser's DecompressionStream('deflate') reads the same
    assert d.eof and d.unused_data == b""
    scales, codes = P.quantise(run.layer(1), run.masked)
    assert len(raw) == scales.nbytes + codes.nbytes


def test_base85_in_pieces_equals_base85_of_the_whole():
    rng = np.random.default_rng(2)
    data = rng.bytes(10_003) + b"\xff" * 8 + b"\0" * 5
    whole = H.b85encode(data)
    assert len(whole) == -(-len(data) // 4) * 5
    for cuts in ([0], [1], [3, 4], [5, 9, 9, 10_000]):
        edges = [0, *cuts, len(data)]
        parts = [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]
        assert b"".join(H._b85_pieces(parts)).decode() == whole
    # against the definition: big-endian base 85 of each 4-byte group
    words = np.frombuffer(data[:4000], ">u4")
    ref = []
    for w in words[:200].tolist():
        ref.append("".join(H.B85[(w // 85 ** p) % 85] for p in range(4, -1, -1)))
    assert whole[:1000] == "".join(ref)


def test_write_html_writes_the_page_to_html_returns(tmp_path):
    run = qk_run(n=40)
    out = tmp_path / "p.html"
    size = H.write_html(run, out, layer=1, head="max")
    text = out.read_text("utf-8")
    assert size == os.path.getsize(out) == len(text.encode("utf-8"))
    assert text == H.to_html(run, layer=1, head="max")
