"""Level-of-detail tiles equal the max/sum reduction of the exact matrix, for runs that hold
weights and runs that keep queries and keys (causal, sliding windows, soft-capping, sink
logits, grouped keys), over heads, without key 0, at the matrix's edges; bad requests are
one clear error."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from attnmap import AttnmapError, tiles
from attnmap.qkweights import QKLayers, row_spans
from attnmap.run import AttentionRun, AttentionStack
from attnmap.tokens import Token

N = 37  # not a multiple of any block below


def _masks(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n)
    causal = i[None, :] > i[:, None]  # [query, key] the future
    return causal, causal | (i[None, :] <= i[:, None] - window)  # and the window


def qk_run(n: int = N, *, heads: int = 4, kv: int = 2, dim: int = 8, window: int = 5,
           softcap: float | None = None, sinks: bool = False, seed: int = 0) -> AttentionRun:
    """Two layers from random queries and keys: layer 0 a sliding window, layer 1 causal."""
    rng = np.random.default_rng(seed)
    causal, windowed = _masks(n, window)
    q = [rng.normal(0, 2, (heads, n, dim)).astype(np.float32) for _ in range(2)]
    k = [rng.normal(0, 2, (kv, n, dim)).astype(np.float32) for _ in range(2)]
    sk = [rng.normal(0, 1, heads).astype(np.float32) for _ in range(2)] if sinks else None
    layers = QKLayers(q, k, [dim ** -0.5] * 2, [windowed, causal], softcap=softcap, sinks=sk)
    st = AttentionStack("self", layers, windowed, [windowed, causal])
    toks = [Token(text=f"t{j}", raw=f"t{j}", id=j) for j in range(n)]
    return AttentionRun(text="", tokens=toks, stacks={"self": st},
                        model={"id": "random", "causal": True})


def dense_of(run: AttentionRun) -> AttentionRun:
    st = run.stack()
    dense = AttentionStack("self", [run.layer(i) for i in range(run.n_layers)],
                           st.mask(0), st.layer_masks)
    return AttentionRun(text="", tokens=run.tokens, stacks={"self": dense}, model=run.model)


def reference(run, layer, head, *, block, q0=0, k0=0, rows=None, cols=None, reduce="max",
              ignore_first=False) -> np.ndarray:
    """The definition, cell by cell, from the exact matrix."""
    w = run.layer(layer).astype(np.float64)  # [head, query, key]
    a = w.mean(0) if head == "mean" else w.max(0) if head == "max" else w[head]
    hidden = run.mask(layer).copy()
    if ignore_first:
        hidden[:, 0] = True
    nq, nk = a.shape
    rows = -(-(nq - q0) // block) if rows is None else rows
    cols = -(-(nk - k0) // block) if cols is None else cols
    out = np.full((rows, cols), np.nan)
    for r, c in itertools.product(range(rows), range(cols)):
        qa, ka = q0 + r * block, k0 + c * block
        cells = a[qa:qa + block, ka:ka + block][~hidden[qa:qa + block, ka:ka + block]]
        if cells.size:
            out[r, c] = cells.max() if reduce == "max" else cells.sum()
    return out


def assert_tile(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, equal_nan=True)


REGIONS = [dict(), dict(q0=5, k0=3, rows=3, cols=4), dict(q0=30, k0=20, rows=4, cols=5)]


@pytest.mark.parametrize("kind", ["plain", "softcap", "sinks"])
@pytest.mark.parametrize("storage", ["qk", "weights"])
def test_tiles_equal_the_reduction_of_the_exact_matrix(kind, storage):
    run = qk_run(softcap=3.0 if kind == "softcap" else None, sinks=kind == "sinks")
    if storage == "weights":
        run = dense_of(run)
    for layer, head, block, reduce, skip0, region in itertools.product(
            [0, 1], [0, 3, "mean", "max"], [1, 2, 4, 64], ["max", "sum"], [False, True],
            REGIONS):
        got = tiles.tile(run, layer, head, block=block, reduce=reduce, ignore_first=skip0,
                         cache=None, **region)
        want = reference(run, layer, head, block=block, reduce=reduce, ignore_first=skip0,
                         **region)
        assert_tile(got, want)


def test_the_window_is_respected_and_masked_blocks_are_nan():
    run = qk_run(n=32, window=4)
    t = tiles.tile(run, 0, 1, block=4, cache=None)  # [8, 8]: layer 0 sees 4 keys back
    r, c = np.indices(t.shape)
    # a 4 × 4 block holds a visible cell only on the diagonal and the one left of it
    np.testing.assert_array_equal(~np.isnan(t), (c == r) | (c == r - 1))
    causal = tiles.tile(run, 1, 1, block=4, cache=None)  # layer 1: the whole past
    np.testing.assert_array_equal(~np.isnan(causal), c <= r)
    assert np.all(t[~np.isnan(t)] > 0)


def test_sums_of_a_row_block_are_its_rows_mass():
    """With reduce="sum" over every key, a block row holds `block` rows' mass: 1 each."""
    run = qk_run()
    t = tiles.tile(run, 1, 2, block=4, reduce="sum", cache=None)
    mass = np.nansum(t, axis=1)
    full_rows = np.minimum(4, N - 4 * np.arange(len(mass)))
    np.testing.assert_allclose(mass, full_rows, rtol=1e-5)


def test_overview_picks_the_smallest_power_of_two():
    run = qk_run()
    t, block = tiles.overview(run, 1, "max", size=8, cache=None)
    assert block == 8 and t.shape == (5, 5)
    assert_tile(t, reference(run, 1, "max", block=8))
    t, block = tiles.overview(run, 1, 0, size=512, cache=None)
    assert block == 1 and t.shape == (N, N)
    assert [tiles.overview_block(n, 512) for n in (512, 513, 1024, 32768)] == [1, 2, 2, 64]


def test_a_tile_past_the_edge_is_nan_there():
    run = qk_run()
    t = tiles.tile(run, 1, 0, block=8, q0=30, k0=0, rows=3, cols=6, cache=None)
    assert np.isnan(t[1:]).all() and np.isnan(t[:, 5:]).all()
    assert_tile(t, reference(run, 1, 0, block=8, q0=30, rows=3, cols=6))
    huge = tiles.tile(run, 1, 0, block=10**9, rows=2, cols=2, cache=None)
    assert_tile(huge, reference(run, 1, 0, block=N, rows=2, cols=2))


def test_normalisers_and_tiles_are_cached_and_reused():
    run = qk_run(sinks=True)
    cache = tiles.TileCache()
    first = tiles.tile(run, 1, "mean", block=4, q0=8, cache=cache)
    assert len(cache) == 4 + 1  # 4 heads' normalisers, the tile
    lay = run.stack().layers
    assert id(lay.masks[1]) in lay._spans  # the mask's row spans: kept by the run, found once
    again = tiles.tile(run, 1, "mean", block=4, q0=8, cache=cache)
    np.testing.assert_array_equal(first, again)
    again[0, 0] = 7  # a caller's copy: the cached tile is unchanged
    assert cache.hits >= 1
    assert not np.array_equal(tiles.tile(run, 1, "mean", block=4, q0=8, cache=cache), again)
    cache.clear("tile")
    assert len(cache) == 4
    # from cached normalisers (other regions, other reductions) the values are the same
    for reduce, skip0 in itertools.product(["max", "sum"], [False, True]):
        got = tiles.tile(run, 1, 2, block=3, q0=4, k0=2, reduce=reduce, ignore_first=skip0,
                         cache=cache)
        assert_tile(got, reference(run, 1, 2, block=3, q0=4, k0=2, reduce=reduce,
                                   ignore_first=skip0))


def test_the_cache_is_bounded_by_bytes():
    cache = tiles.TileCache(max_bytes=1000)
    owner = qk_run().stack()
    for i in range(10):
        cache.put(owner, ("tile", i), np.zeros(100, np.float32), 400)
    assert cache.bytes <= 1000 and len(cache) == 2
    assert cache.get(owner, ("tile", 9)) is not None and cache.get(owner, ("tile", 0)) is None
    cache.put(owner, ("big",), np.zeros(1), 5000)  # larger than the whole cache: not kept
    assert cache.get(owner, ("big",)) is None


def test_a_head_is_never_held_at_full_resolution(monkeypatch):
    """Chunks of rows: the memory of an overview is a small part of one head's matrix."""
    n = 1024
    run = qk_run(n=n, heads=2, kv=1, dim=16, window=300)
    monkeypatch.setattr(QKLayers, "compute", None)  # the whole-layer path is never taken
    monkeypatch.setattr(tiles, "CHUNK_CELLS", 32 * n)
    tracemalloc.start()
    try:
        tiles.overview(run, 1, 0, size=64, cache=tiles.TileCache())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 // 4, f"{peak:,} bytes at the peak"


@pytest.mark.parametrize("kwargs,words", [
    (dict(head=4), "head must be in 0..3"),
    (dict(head="median"), "'mean' or 'max'"),
    (dict(head=1.5), "head must be a head number"),
    (dict(layer=2), "layer must be in 0..1"),
    (dict(block=0), "zoom beyond exact"),
    (dict(block=0.5), "zoom beyond exact"),
    (dict(q0=N), "q0 must be in 0..36"),
    (dict(k0=-1), "k0 must be a whole number"),
    (dict(rows=0), "rows must be a whole number ≥ 1"),
    (dict(reduce="mean"), "reduce must be one of max, sum"),
    (dict(stack="cross"), "no 'cross' attention"),
])
def test_bad_requests_are_one_clear_error(kwargs, words):
    run = qk_run()
    args = {"layer": 0, "head": 0, **kwargs}
    with pytest.raises(AttnmapError, match=words.replace("(", r"\(").replace(".", r"\.")):
        tiles.tile(run, args.pop("layer"), args.pop("head"), cache=None, **args)


def test_a_run_file_whose_queries_do_not_match_its_tokens_is_refused(tmp_path):
    from .test_hostile_runs import _qk_parts, _refused, _write

    meta, tensors = _qk_parts(tmp_path)
    longer = {**tensors, "q.layer.1": np.ones((2, 5, 4), np.float32)}
    _refused(_write(tmp_path, meta, longer), "queries for 5", "3 query and 3 key tokens")
    shorter = {**tensors, "k.layer.0": np.ones((1, 2, 4), np.float32)}
    _refused(_write(tmp_path, meta, shorter), "keys for 2 positions")


def test_a_backend_can_take_over_and_decline():
    run = qk_run()
    seen = []

    def backend(layers, layer, heads, mask, spec):
        seen.append((layer, tuple(heads), spec["block"]))
        return None  # declined: numpy computes it

    tiles.set_backend(backend)
    try:
        got = tiles.tile(run, 1, "max", block=4, cache=None)
    finally:
        tiles.set_backend(None)
    assert seen == [(1, (0, 1, 2, 3), 4)]
    assert_tile(got, reference(run, 1, "max", block=4))


@pytest.mark.parametrize("nq,nk", [(1, 1), (5, 7), (9, 16), (13, 17), (70, 33), (3, 0)])
def test_row_extents_match_their_definition(nq, nk):
    """Each row's first and one-past-last visible key, and whether all keys between are
    visible, read from the packed mask, equal a row-by-row reading, for key counts that are
    and are not multiples of 8 and for random, causal, windowed, padded and empty masks."""
    rng = np.random.default_rng(nq * 100 + nk)
    r, c = np.indices((nq, nk))
    padded = (c > r) | (c <= r - 3)
    padded[::4] = True
    holes = np.triu(np.ones((nq, nk), bool), 1)
    holes[:, 1::5] = True  # visible keys with gaps
    for m in (rng.random((nq, nk)) < 0.5, np.triu(np.ones((nq, nk), bool), 1),
              np.ones((nq, nk), bool), np.zeros((nq, nk), bool), padded, holes):
        lo, hi, whole = row_spans(m)
        for row in range(nq):
            seen = np.flatnonzero(~m[row])
            if len(seen) == 0:
                assert (lo[row], hi[row], whole[row]) == (0, 0, True)
            else:
                assert (lo[row], hi[row]) == (seen[0], seen[-1] + 1)
                assert whole[row] == (len(seen) == seen[-1] + 1 - seen[0])
