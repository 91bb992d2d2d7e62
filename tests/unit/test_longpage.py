"""The standalone page's long representation (viewer/longpage.py): the pyramid is the
reduction of the exact matrix, kept cells are exact within the codes, bounds hold."""

from __future__ import annotations

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token
from attnmap._errors import AttnmapError
from attnmap.viewer import longpage as LP
from attnmap.viewer.payload import LEVELS


def _softmax_run(n: int = 200, heads: int = 3, layers: int = 2, window: int | None = None,
                 seed: int = 0) -> AttentionRun:
    rng = np.random.default_rng(seed)
    q, k = np.indices((n, n))
    masked = k > q  # [query, key] causal
    masks = [masked, masked | (q - k >= window)] if window else None
    out = []
    for li in range(layers):
        m = masks[li % 2] if masks else masked
        s = rng.normal(0, 3, (heads, n, n)).astype(np.float32)  # [head, query, key]
        s[:, m] = -np.inf
        w = np.exp(s - s.max(axis=2, keepdims=True))
        out.append((w / w.sum(axis=2, keepdims=True)).astype(np.float32))
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    st = AttentionStack("self", out, masked, layer_masks=[masks[i % 2] for i in range(layers)]
                        if masks else None)
    return AttentionRun(tokens=toks, stacks={"self": st}, model={"id": "rand"},
                        text=" ".join(t.text for t in toks))


def _qk_run(n: int, heads: int, window: int, seed: int = 0) -> AttentionRun:
    """A run that keeps queries and keys (one key head): a causal layer, then a windowed one."""
    from attnmap.qkweights import QKLayers

    rng = np.random.default_rng(seed)
    q, k = np.indices((n, n))
    masks = [k > q, (k > q) | (q - k >= window)]
    lazy = QKLayers([rng.normal(0, 2, (heads, n, 8)).astype(np.float32) for _ in masks],
                    [rng.normal(0, 2, (1, n, 8)).astype(np.float32) for _ in masks],
                    [0.5, 0.5], masks)
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]
    return AttentionRun(tokens=toks, text=" ".join(t.text for t in toks), model={"id": "r"},
                        stacks={"self": AttentionStack("self", lazy, masks[0], masks)})


def _rel_ok(got: np.ndarray, want: np.ndarray, hi: float) -> None:
    """Within the log codes: 2.8 % relative, or 0 below hi·10^-DECADES."""
    floor = hi * 10.0 ** -LP.DECADES
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    g, w = got[ok], want[ok]
    small = w < floor
    assert np.all(g[small] <= floor * 1.03)
    np.testing.assert_allclose(g[~small], w[~small], rtol=0.029)


@pytest.mark.parametrize("n,block", [(200, 16), (203, 8), (64, 1)])
def test_pyramid_is_the_reduction_of_the_exact_matrix(n, block):
    run = _softmax_run(n, window=40)
    for li in range(2):
        w, m = run.layer(li)[1], run.mask(li)  # [query, key]
        d = LP.decode_head(LP.encode_head(w, m, block, 8), n, n, block)
        pq = -(-n // block)
        want_max = np.full((pq, pq), np.nan, np.float32)
        want_sum = np.full((pq, pq), np.nan, np.float32)
        rest_max = np.full(pq, np.nan, np.float32)
        for i in range(pq):
            for j in range(pq):
                cells = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
                vis = ~m[i * block:(i + 1) * block, j * block:(j + 1) * block]
                if vis.any():
                    want_max[i, j] = cells[vis].max()
                    want_sum[i, j] = cells[vis].sum()
            cells = w[i * block:(i + 1) * block, 1:block]
            vis = ~m[i * block:(i + 1) * block, 1:block]
            if vis.any():
                rest_max[i] = cells[vis].max()
        _rel_ok(d["max"], want_max, np.nanmax(want_max))
        _rel_ok(d["sum"], want_sum, np.nanmax(want_sum))
        if block > 1:
            _rel_ok(d["rest_max"], rest_max, np.nanmax(want_max))


def test_kept_cells_are_exact_and_bounds_hold():
    n, k = 150, 12
    run = _softmax_run(n, window=30)
    for li in range(2):
        w, m = run.layer(li)[2], run.mask(li)
        d = LP.decode_head(LP.encode_head(w, m, 16, k), n, n, 16)
        assert np.array_equal(d["count"], np.minimum(k, (~m).sum(axis=1)))
        np.testing.assert_allclose(d["rowmax"], np.where(m, 0, w).max(axis=1), rtol=1e-6)
        got = w[d["rows"], d["keys"]]
        assert not m[d["rows"], d["keys"]].any()
        step = d["rowmax"][d["rows"]] / (2 * LEVELS)
        assert np.all(np.abs(d["values"] - got) <= step + 1e-7)
        for r in range(n):
            kept = d["keys"][d["rows"] == r]
            assert np.all(np.diff(kept) > 0)
            rest = np.setdiff1d(np.nonzero(~m[r])[0], kept)
            top = np.sort(w[r][~m[r]])[::-1]
            assert np.allclose(np.sort(w[r, kept])[::-1], top[: len(kept)])
            if rest.size:
                assert np.all(w[r, rest] <= d["bound"][r] + 1e-7)
                assert d["bound"][r] <= w[r, rest].max() + d["rowmax"][r] / LEVELS + 1e-7
            else:
                assert d["bound"][r] == 0


def test_mask_intervals_round_trip():
    rng = np.random.default_rng(1)
    for m in (np.triu(np.ones((50, 60), bool), 1), rng.random((40, 33)) < 0.5,
              np.ones((5, 7), bool), np.zeros((5, 7), bool)):
        assert np.array_equal(LP.decode_mask(LP.encode_mask(m), *m.shape), m)


def test_log_codes_round_trip_and_edges():
    hi = 0.5
    x = np.array([0, 1e-9, hi * 1e-6, 1e-3, 0.25, hi], np.float32)
    c = LP.log_codes(x, hi, np.zeros(6, bool))
    assert c[0] == 0 and c[1] == 0 and c[-1] == 254 and c[2] == 1
    back = LP.log_values(c, hi)
    np.testing.assert_allclose(back[2:], x[2:], rtol=0.029)
    assert LP.log_codes(x, hi, np.ones(6, bool)).tolist() == [255] * 6


def test_build_chunks_and_header():
    run = _softmax_run(300, heads=2, window=50)
    data = LP.build(run, k=8)
    keys = [k for k, _ in data.chunks]
    assert keys == ["mask/self/0", "mask/self/1"] + [  # per layer: its heads, then together
        key for li in range(2) for key in [f"self/{li}/0", f"self/{li}/1",
                                           f"agg/mean/self/{li}", f"agg/max/self/{li}"]]
    assert data.block == 1 and data.k == 8 and data.tokens == 300
    import json
    import struct
    _, _, hl = struct.unpack_from("<4sII", data.payload)
    head = json.loads(data.payload[12:12 + hl])
    assert head["long"]["stacks"]["self"]["masks"] == [0, 1]
    assert head["chunks"] == [] and head["long"]["k"] == 8
    with pytest.raises(AttnmapError, match="k must be"):
        LP.build(run, k=0)


@pytest.mark.parametrize("block,storage", [(1, "weights"), (8, "weights"), (1, "qk"),
                                           (4, "qk")])
def test_layer_pyramids_are_the_mean_and_max_of_the_heads_cell_by_cell(block, storage,
                                                                        monkeypatch):
    """A layer's chunks: the heads' weights averaged (or maxed) cell by cell, then reduced
    over blocks by max and by sum (and the first block column without key 0), within the
    codes — all four of mean/max × block max/sum, as tiles.tile defines them; the heads'
    own chunks are those a head alone gets. Heads come two at a time, so the running mean
    and max cross groups."""
    n, heads = 203, 3
    run = _softmax_run(n, heads=heads, window=40)
    if storage == "qk":
        run = _qk_run(n, heads=heads, window=40)
    monkeypatch.setattr(LP, "block_size", lambda n: block)
    monkeypatch.setattr(LP.LayerReducer.__init__, "__kwdefaults__",
                        {"aggregate": True, "cells": 2 * LP.ROWS * n})
    data = LP.build(run, k=6)
    chunks = dict(data.chunks)
    for li in range(2):
        w, m = run.layer(li), run.mask(li)  # [head, query, key], [query, key]
        for how, cellwise in (("mean", w.mean(axis=0)), ("max", w.max(axis=0))):
            got = LP.decode_pyramid(chunks[f"agg/{how}/self/{li}"], n, n, block)
            want = LP.pyramid(cellwise, m, block)
            for plane in LP.PLANES:
                hi = float(np.nanmax(want[plane.removeprefix("rest_")]))
                _rel_ok(got[plane], want[plane], hi)
            assert np.isnan(got["max"]).any() and (block == 1 or not np.isnan(
                got["rest_sum"]).all())
        for h in range(heads):
            alone = LP.pack(LP.reduce_head(LP._dense_rows(w[h], m), m, block, 6), n)
            one = LP.decode_head(chunks[f"self/{li}/{h}"], n, n, block)
            ref = LP.decode_head(alone, n, n, block)
            for key in ("max", "sum", "rest_max", "rest_sum", "rowmax", "count", "keys",
                        "values"):
                np.testing.assert_allclose(one[key], ref[key], rtol=1e-5, atol=1e-7,
                                           err_msg=key)


def test_k_follows_the_budget():
    run = _softmax_run(300, heads=2)
    big = LP.build(run, budget=10**9)
    small = LP.build(run, budget=4 * 3000)
    assert big.k > small.k
    assert big.k == max(k for k in LP.K_CHOICES if k <= 300)


def test_choose_by_size():
    assert LP.choose(_softmax_run(64)) == "dense"
    assert LP.block_size(8192) == 16 and LP.block_size(512) == 1 and LP.block_size(513) == 2
    assert LP.growth({1024: 2.0, 2048: 4.0, 4096: 8.0}) == pytest.approx(1.0)


@pytest.mark.parametrize("block", [1, 8])
def test_a_qk_run_reduces_as_its_weights_do(block):
    """Read from queries and keys a block of rows at a time over only the keys the rows may
    see (a window leaves early keys behind), a head reduces as its whole matrix does."""
    from attnmap.qkweights import QKLayers

    rng = np.random.default_rng(3)
    n, heads = 300, 2
    q, k = np.indices((n, n))
    masks = [k > q, (k > q) | (q - k >= 37)]  # causal, then a 37-key window
    qs = [rng.normal(size=(heads, n, 8)).astype(np.float32) for _ in masks]
    ks = [rng.normal(size=(1, n, 8)).astype(np.float32) for _ in masks]
    lazy = QKLayers(qs, ks, [0.9, 0.9], masks)
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i) for i in range(n)]

    def run(layers):
        return AttentionRun(tokens=toks, text=" ".join(t.text for t in toks), model={"id": "r"},
                            stacks={"self": AttentionStack("self", layers, masks[0], masks)})

    qk_run, dense_run = run(lazy), run([lazy.compute(0), lazy.compute(1)])
    for li in range(2):
        for h in range(heads):
            got = LP.reduce_head(LP._rows(qk_run, "self", li, h), masks[li], block, 6)
            want = LP.reduce_head(LP._rows(dense_run, "self", li, h), masks[li], block, 6)
            for name in ("max", "sum", "rest_max", "rest_sum", "rowmax", "bound", "values"):
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7,
                                           err_msg=name)
            for name in ("count", "keys"):
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _check_top_k(c: np.ndarray, k: int) -> None:
    rowmax, count, bound, keys, values = LP._top_k(c.copy(), k)
    at = 0
    for r in range(c.shape[0]):
        vis = np.sort(c[r][c[r] >= 0])[::-1]
        got = keys[at : at + count[r]]
        at += count[r]
        assert count[r] == min(k, vis.size)
        seen = np.flatnonzero(c[r] >= 0)
        want = seen[np.lexsort((seen, -c[r, seen]))][: count[r]]  # ties: smaller keys kept
        np.testing.assert_array_equal(got, np.sort(want))
        assert bound[r] == (vis[k] if vis.size > k else 0)
        assert rowmax[r] == (vis[0] if vis.size else 0)
    assert at == keys.size
    np.testing.assert_array_equal(values, c[np.repeat(np.arange(c.shape[0]), count), keys])


@pytest.mark.parametrize("k", [1, 5, 40, 63, 64, 100])
def test_top_k_with_ties_zeros_and_masked_rows(k):
    """Each row keeps its k largest cells (of equal values, the smaller keys), the bound is the
    largest visible cell left out: rows of distinct values (a few cells masked), then also
    ties at the cut, exact zeros, mostly masked rows and rows with fewer than k visible."""
    rng = np.random.default_rng(k)
    wide = rng.random((20, 1024)).astype(np.float32)
    wide[:, 500:] = -1  # masked: a causal row
    _check_top_k(wide, k)
    n, w = 40, 64
    c = rng.random((n, w)).astype(np.float32)
    c[np.arange(n), rng.integers(0, w, n)] = -1
    _check_top_k(c, k)
    if k < w - 1:  # the k-th and (k + 1)-th largest equal: k + 1 cells reach the cut
        kth = np.argsort(-c, axis=1, kind="stable")
        c[np.arange(n), kth[:, k]] = c[np.arange(n), kth[:, k - 1]]
        _check_top_k(c, k)
    c[5:10] = np.round(c[5:10] * 4) / 4  # few distinct values: ties everywhere
    c[10:15] = 0  # a row of exact zeros (underflow)
    c[10:15, 3] = 1
    c[15:25][rng.random((10, w)) < 0.7] = -1  # masked cells
    c[25:30, 4:] = -1  # 4 visible cells
    c[30] = -1  # nothing visible
    _check_top_k(c, k)


def test_negative_zero_weights_count_as_zero():
    """A dense head may hold -0.0 (softmax never does): the row still keeps exactly k cells."""
    w = np.zeros((2, 50), np.float32)
    m = np.zeros((2, 50), bool)
    w[:, :3] = [0.5, 0.3, 0.2]
    w[:, 3:13] = -0.0
    m[:, 13:] = True
    r = LP.reduce_head(LP._dense_rows(w, m), m, 1, 8)
    assert r["count"].tolist() == [8, 8] and r["bound"].tolist() == [0, 0]
    assert r["keys"][:8].tolist() == list(range(8))


def test_page_written_in_pieces_equals_the_page(tmp_path):
    """`write_long_html` streams the same page `long_page` returns, whether the elements'
    text was made on the worker threads (``encode``) or is made while writing."""
    from attnmap.viewer import html

    run = _softmax_run(120, heads=2, window=30)
    threaded = LP.build(run, k=8, encode=html.b85encode)
    plain = LP.build(run, k=8)
    assert threaded.encoded == [html.b85encode(c) for _, c in threaded.chunks]
    assert plain.encoded is None and plain.chunks == threaded.chunks
    size = html.write_long_html(threaded, tmp_path / "p.html", {"layer": 1})
    text = (tmp_path / "p.html").read_text("utf-8")
    assert text == html.long_page(plain, {"layer": 1}) and size == len(text.encode("utf-8"))
    # two masks, 2 layers × 2 heads, and per layer the mean and the max of its heads
    assert text.count('class="attnmap-long"') == len(plain.chunks) == 2 + 2 * 2 + 2 * 2
