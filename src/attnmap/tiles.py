"""Level-of-detail tiles: one head's attention matrix reduced to blocks, computed on demand.

A tile is a window of the ``[query, key]`` matrix of one layer's head (or of the mean / max
over its heads) at a resolution of ``block × block`` cells per value: cell ``(r, c)`` covers
queries ``q0 + r·block …`` and keys ``k0 + c·block …`` and holds the max (``reduce="max"``,
shows peaks) or the sum (``reduce="sum"``, shows mass) of the weights of the block's unmasked
cells, NaN where the block holds none. ``block=1`` is the exact matrix.

Runs captured with ``store="qk"`` keep queries and keys: their tiles are computed from them a
few query rows at a time, over only the keys each row's mask lets it see (a causal row skips
the future, a sliding-window row everything outside its window), so memory stays
O(rows of a chunk × keys) and a whole head is never held at full resolution. The row
normalisers of the softmax (max logit and sum of exponentials per head and query) come with
the run when its capture's fused attention gave them (the log-sum-exp of each row), or are
computed once per layer and head and kept in a bounded cache, with the tiles themselves.

For a max tile the softmax needs no exponential per cell: ``max exp(s - t)/z`` over a row's
cells is ``exp(max s - t)/z``, so once the normalisers are known a max tile costs one
matrix product and one max pass. A GPU backend may be registered by the capture layer
(:func:`set_backend`); this module never imports torch.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import AttnmapError
from ._parallel import map_threads
from .qkweights import QKLayers, row_spans

REDUCES = ("max", "sum")
HEAD_AGGREGATES = ("mean", "max")
# Cells of float32 logits held at once per chunk of query rows (32 MB: at 32,768 keys, 256
# rows, where a row block's matrix product runs ~15 % faster than at 128).
CHUNK_CELLS = 1 << 23

_NEG = np.float32(-np.inf)


class TileCache:
    """A least-recently-used cache of arrays, bounded by their bytes, keyed per owner object.

    Entries hold only a weak reference to their owner (an :class:`AttentionStack`, a mask):
    a key of an object that is gone never answers for a new object at the same address.
    Thread-safe: the app computes tiles in worker threads.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, owner: Any, key: tuple[Any, ...]) -> Any:
        full = (id(owner), *key)
        with self._lock:
            item = self._items.get(full)
            if item is None or item[0]() is not owner:
                if item is not None:
                    self._drop(full)
                self.misses += 1
                return None
            self._items.move_to_end(full)
            self.hits += 1
            return item[1]

    def put(self, owner: Any, key: tuple[Any, ...], value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        full = (id(owner), *key)
        with self._lock:
            if full in self._items:
                self._drop(full)
            self._items[full] = (weakref.ref(owner), value, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, full: tuple[Any, ...]) -> None:
        self.bytes -= self._items.pop(full)[2]

    def clear(self, kind: str | None = None) -> None:
        """Forget every entry, or only those of one kind (``"tile"``, ``"norms"``,
        ``"extents"``)."""
        with self._lock:
            for full in [f for f in self._items if kind is None or f[1] == kind]:
                self._drop(full)


CACHE = TileCache()

# An optional faster way to compute tiles of q/k layers (a GPU), registered from above core:
# called as backend(layers, layer, heads, mask, spec) with spec a dict of the tile's
# parameters; it returns the tile or None to let numpy compute it.
Backend = Callable[[QKLayers, int, list[int], np.ndarray, dict[str, Any]], "np.ndarray | None"]
_backend: Backend | None = None


def set_backend(fn: Backend | None) -> None:
    """Register (or with None remove) a tile backend for runs that keep queries and keys."""
    global _backend
    _backend = fn


# --- public API ------------------------------------------------------------------------------
def tile(run: Any, layer: int, head: int | str, *, stack: str | None = None, block: int = 1,
         q0: int = 0, k0: int = 0, rows: int | None = None, cols: int | None = None,
         reduce: str = "max", ignore_first: bool = False,
         cache: TileCache | None = CACHE) -> np.ndarray:
    """One tile ``[rows, cols]`` float32 of a layer's head (an index, ``"mean"`` or ``"max"``
    over the heads, taken cellwise before the blocks are reduced).

    Cell ``(r, c)`` reduces (``"max"`` or ``"sum"``) the weights of queries
    ``q0 + r·block … q0 + (r+1)·block - 1`` and keys ``k0 + c·block …`` (clipped at the edge)
    over the cells the layer's mask lets through; NaN where there are none (or the block lies
    past the edge). ``ignore_first`` leaves key 0 out (attention sinks). ``rows``/``cols``
    default to the rest of the matrix.
    """
    st = run.stack(stack)
    li = run.layer_index(layer, stack)
    heads, agg = _heads(head, st.n_heads)
    _, _, nq, nk = st.shape
    block = _whole(block, "block", 1, "a zoom beyond exact cells: 1 is one cell per value")
    q0 = _whole(q0, "q0", 0)
    k0 = _whole(k0, "k0", 0)
    if q0 >= nq:
        raise AttnmapError(f"q0 must be in 0..{nq - 1}, a query of the matrix (not {q0})")
    if k0 >= nk:
        raise AttnmapError(f"k0 must be in 0..{nk - 1}, a key of the matrix (not {k0})")
    rows = -(-(nq - q0) // block) if rows is None else _whole(rows, "rows", 1)
    cols = -(-(nk - k0) // block) if cols is None else _whole(cols, "cols", 1)
    if reduce not in REDUCES:
        raise AttnmapError(f"reduce must be one of {', '.join(REDUCES)} (not {reduce!r})")
    ignore_first = bool(ignore_first)
    key = ("tile", li, head if agg else heads[0], block, q0, k0, rows, cols, reduce,
           ignore_first)
    if cache is not None:
        hit = cache.get(st, key)
        if hit is not None:
            out: np.ndarray = hit.copy()
            return out
    mask = st.mask(li)  # [query, key] True = cannot attend
    # only the values inside the matrix are computed; the rest of the tile stays NaN
    inside_r = min(rows, -(-(nq - q0) // block))
    inside_c = min(cols, -(-(nk - k0) // block))
    spec = dict(block=min(block, max(nq, nk)), q0=q0, k0=k0, rows=inside_r, cols=inside_c,
                reduce=reduce, ignore_first=ignore_first, agg=agg)
    result = None
    if isinstance(st.layers, QKLayers):
        if _backend is not None:
            result = _backend(st.layers, li, heads, mask, spec)
        if result is None:
            result = _qk_tile(st, li, heads, mask, spec, cache)
    else:
        result = _dense_tile(st.layers[li], heads, mask, spec)
    if (inside_r, inside_c) != (rows, cols):
        full = np.full((rows, cols), np.nan, dtype=np.float32)
        full[:inside_r, :inside_c] = result
        result = full
    result = np.ascontiguousarray(result, dtype=np.float32)
    if cache is not None:
        cache.put(st, key, result.copy(), result.nbytes)
    return result


def overview(run: Any, layer: int, head: int | str, *, stack: str | None = None,
             size: int = 512, reduce: str = "max", ignore_first: bool = False,
             cache: TileCache | None = CACHE) -> tuple[np.ndarray, int]:
    """The whole matrix in at most ``size × size`` values: ``(tile, block)`` with block the
    smallest power of two that fits the longer side into ``size``."""
    size = _whole(size, "size", 1)
    _, _, nq, nk = run.stack(stack).shape
    block = overview_block(max(nq, nk), size)
    t = tile(run, layer, head, stack=stack, block=block, reduce=reduce,
             ignore_first=ignore_first, cache=cache)
    return t, block


def overview_block(n: int, size: int) -> int:
    """The smallest power of two ``b`` with ``ceil(n / b) ≤ size``."""
    b = 1
    while -(-n // b) > size:
        b *= 2
    return b


# --- checks ----------------------------------------------------------------------------------
def _whole(x: Any, name: str, least: int, hint: str = "") -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        if isinstance(x, (float, np.floating)) and float(x).is_integer():
            x = int(x)
        else:
            raise AttnmapError(f"{name} must be a whole number ≥ {least} (not {x!r})"
                               + (f"; {hint}" if hint else ""))
    if x < least:
        raise AttnmapError(f"{name} must be a whole number ≥ {least} (not {x!r})"
                           + (f"; {hint}" if hint else ""))
    return int(x)


def _heads(head: Any, n: int) -> tuple[list[int], str | None]:
    if isinstance(head, str):
        if head not in HEAD_AGGREGATES:
            raise AttnmapError(f"head must be a head number in 0..{n - 1}, 'mean' or 'max' "
                               f"(not {head!r})")
        return list(range(n)), head
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise AttnmapError(f"head must be a head number in 0..{n - 1}, 'mean' or 'max' "
                           f"(not {head!r})")
    if not -n <= head < n:
        raise AttnmapError(f"head must be in 0..{n - 1} or -{n}..-1 counting from the end "
                           f"(not {head!r})")
    return [int(head) % n], None


# --- dense runs ------------------------------------------------------------------------------
def _dense_tile(weights: Any, heads: list[int], mask: np.ndarray,
                spec: dict[str, Any]) -> np.ndarray:
    b, q0, k0 = spec["block"], spec["q0"], spec["k0"]
    rows, cols = spec["rows"], spec["cols"]
    nq, nk = mask.shape
    qa, qb = q0, min(nq, q0 + rows * b)
    ka, kb = k0, min(nk, k0 + cols * b)
    w = np.asarray(weights)
    if spec["agg"] is None:
        sub = np.asarray(w[heads[0], qa:qb, ka:kb], dtype=np.float32)  # [query, key]
    else:
        part = np.asarray(w[:, qa:qb, ka:kb], dtype=np.float32)  # [head, query, key]
        sub = part.mean(axis=0) if spec["agg"] == "mean" else part.max(axis=0)
    hidden = np.array(mask[qa:qb, ka:kb], dtype=bool)  # [query, key]
    if spec["ignore_first"] and ka == 0:
        hidden[:, 0] = True
    vals = np.full((rows * b, cols * b), _NEG, dtype=np.float32)
    vals[: qb - qa, : kb - ka] = np.where(hidden, _NEG, sub)
    blocks = vals.reshape(rows, b, cols, b)
    best = blocks.max(axis=(1, 3))  # [rows, cols]
    if spec["reduce"] == "max":
        out = best
    else:
        out = np.where(np.isneginf(vals), np.float32(0), vals).reshape(
            rows, b, cols, b).sum(axis=(1, 3), dtype=np.float64).astype(np.float32)
    out[np.isneginf(best)] = np.nan
    return out


# --- runs that keep queries and keys ---------------------------------------------------------
def _extents(mask: np.ndarray, cache: TileCache | None) -> tuple[np.ndarray, ...]:
    """:func:`~attnmap.qkweights.row_spans` of the mask, kept in the cache."""
    if cache is not None:
        hit = cache.get(mask, ("extents",))
        if hit is not None:
            ext: tuple[np.ndarray, ...] = hit
            return ext
    ext = row_spans(mask)
    if cache is not None:
        cache.put(mask, ("extents",), ext, sum(x.nbytes for x in ext))
    return ext


class _Layer:
    """One q/k layer ready for chunked logits: float32 keys per key head, scale, cap, sinks."""

    def __init__(self, lay: QKLayers, li: int, mask: np.ndarray,
                 ext: tuple[np.ndarray, ...]) -> None:
        self.q = lay.q[li]  # [head, query, dim]
        self.k = lay.k[li]  # [kv_head, key, dim]
        self.rep = self.q.shape[0] // self.k.shape[0]
        self.cap = lay.softcap[li]
        self.scaling = lay.scaling[li]
        self.sinks = None if lay.sinks is None else lay.sinks[li]
        self.mask = mask
        self.lo, self.hi, self.whole = ext
        self._keys: dict[int, np.ndarray] = {}

    def keys(self, h: int) -> np.ndarray:
        g = h // self.rep
        if g not in self._keys:
            self._keys[g] = np.ascontiguousarray(self.k[g], dtype=np.float32)  # [key, dim]
        return self._keys[g]

    def logits(self, h: int, r0: int, r1: int, c0: int, c1: int, out: np.ndarray,
               capped: bool = True) -> np.ndarray:
        """Scaled (and, if ``capped``, soft-capped) logits of head h for queries r0..r1 and
        keys c0..c1 into ``out`` ``[r1-r0, c1-c0]``, -inf where the mask hides the cell."""
        s = out[: r1 - r0, : c1 - c0]
        if c1 <= c0 or r1 <= r0:
            return s
        f = self.scaling if self.cap is None else self.scaling / self.cap
        q = self.q[h, r0:r1].astype(np.float32) * np.float32(f)  # [rows, dim]
        np.matmul(q, self.keys(h)[c0:c1].T, out=s)
        if self.cap is not None and capped:
            np.tanh(s, out=s)
            s *= np.float32(self.cap)
        lo, hi = self.lo[r0:r1], self.hi[r0:r1]
        if self.whole[r0:r1].all():
            # rows see one run of keys each: only the strips where rows differ need the mask
            a, b = int(lo.max()), int(hi.min())
            for x0, x1 in ((c0, min(c1, max(a, c0))), (max(c0, min(b, c1)), c1)):
                if x1 > x0:
                    np.copyto(s[:, x0 - c0 : x1 - c0], _NEG,
                              where=self.mask[r0:r1, x0:x1])
        else:
            np.copyto(s, _NEG, where=self.mask[r0:r1, c0:c1])
        return s

    def cap_values(self, m: np.ndarray) -> np.ndarray:
        """Soft-cap logits that were reduced uncapped (tanh is monotonic); -inf stays."""
        if self.cap is not None:
            fin = np.isfinite(m)
            m[fin] = np.tanh(m[fin]) * np.float32(self.cap)
        return m


def _allowed(layer: _Layer, r0: int, r1: int, t0: int, nb: int, b: int,
             skip0: bool) -> np.ndarray:
    """Which blocks ``[row block, column block]`` of rows r0..r1 and keys t0… hold a cell
    the mask lets through (key 0 left out when ``skip0``)."""
    nr = r1 - r0
    gr = -(-nr // b)
    lo, hi = layer.lo[r0:r1], layer.hi[r0:r1]
    if skip0:
        lo = np.maximum(lo, 1)
    if layer.whole[r0:r1].all():
        # each row sees one run of keys: mark the blocks it spans, per row block
        some = hi > lo
        first = np.clip((lo - t0) // b, 0, nb)
        last = np.clip((hi - 1 - t0) // b + 1, 0, nb)
        some &= last > first
        marks = np.zeros((gr, nb + 1), dtype=np.int64)
        g = np.arange(nr) // b
        np.add.at(marks, (g[some], first[some]), 1)
        np.add.at(marks, (g[some], last[some]), -1)
        return np.cumsum(marks[:, :nb], axis=1) > 0
    seen = np.zeros((gr * b, nb * b), dtype=bool)
    t1 = min(layer.mask.shape[1], t0 + nb * b)
    seen[:nr, : t1 - t0] = ~layer.mask[r0:r1, t0:t1]
    if skip0 and t0 == 0:
        seen[:, 0] = False
    return np.asarray(seen.reshape(gr, b, nb, b).any(axis=(1, 3)))


def _fold(x: np.ndarray, gr: int, b: int, nb: int, how: str) -> np.ndarray:
    """``[gr·b, nb·b]`` → ``[gr, nb]``: max or sum over each block (rows first: the reduction
    over rows runs along contiguous memory)."""
    x = x.reshape(gr, b, nb * b)
    if how == "max":
        return x.max(axis=1).reshape(gr, nb, b).max(axis=2)
    out: np.ndarray = x.sum(axis=1, dtype=np.float64).reshape(gr, nb, b).sum(axis=2)
    return out


def _qk_tile(st: Any, li: int, heads: list[int], mask: np.ndarray, spec: dict[str, Any],
             cache: TileCache | None) -> np.ndarray:
    lay: QKLayers = st.layers
    nq, nk = mask.shape
    b, q0, k0 = spec["block"], spec["q0"], spec["k0"]
    rows, cols = spec["rows"], spec["cols"]
    reduce, agg, skip0 = spec["reduce"], spec["agg"], spec["ignore_first"]
    ext = lay.spans(li) if lay.masks[li] is mask else _extents(mask, cache)
    layer = _Layer(lay, li, mask, ext)
    lo, hi = ext[0], ext[1]
    # normalisers per head (row max logit, row sum of exponentials): cached ones, and [query]
    # arrays to fill for the others in the same pass as the tile
    norms: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    missing: set[int] = set()
    lse = None if lay.logsumexp is None else lay.logsumexp[li]  # [head, query], from capture
    for h in heads:
        hit = cache.get(st, ("norms", li, h)) if cache is not None else None
        if hit is None and lse is not None:
            # the capture's log-sum-exp is the normaliser: weight = exp(logit − lse)
            top = np.array(lse[h], dtype=np.float32)
            top[~np.isfinite(top)] = 0.0  # rows that see no key draw nothing anyway
            hit = (top, np.ones(nq, np.float32))
        if hit is None:
            missing.add(h)
            norms[h] = (np.zeros(nq, np.float32), np.ones(nq, np.float32))
        else:
            norms[h] = hit
    qa, qb = q0, min(nq, q0 + rows * b)
    kb = min(nk, k0 + cols * b)
    step = max(b, (CHUNK_CELLS // max(nk, 1)) // b * b)  # query rows per chunk, whole blocks
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    chunks: list[tuple[int, int, bool]] = []
    if missing:  # rows outside the tile still need their normalisers
        chunks += [(r, min(r + step, qa), False) for r in range(0, qa, step)]
    chunks += [(r, min(r + step, qb), True) for r in range(qa, qb, step)]
    if missing:
        chunks += [(r, min(r + step, nq), False) for r in range(qb, nq, step)]
    for h in heads:
        layer.keys(h)  # each key head made contiguous once, before the threads share them

    def one_chunk(r0: int, r1: int, in_tile: bool, buf: np.ndarray) -> None:
        e0, e1 = int(lo[r0:r1].min()), int(hi[r0:r1].max())  # keys these rows can see
        if e1 <= e0:
            return  # every key hidden from these rows: normalisers stay (0, 1), cells NaN
        nr = r1 - r0
        gr = -(-nr // b)
        # the tile's keys within what the rows see, widened to whole blocks
        t0 = k0 + max(0, (e0 - k0) // b * b)
        t1 = min(kb, k0 + -(-(e1 - k0) // b) * b)
        use_tile = in_tile and t1 > t0
        if not use_tile and not missing:
            return
        nb = -(-(t1 - t0) // b) if use_tile else 0  # column blocks these rows reach
        c0, c1 = (min(e0, t0), max(e1, t1)) if use_tile and missing else (
            (t0, t1) if use_tile else (e0, e1))
        if not missing:
            c0, c1 = t0, t1
        width = max(c1 - c0, t0 - c0 + nb * b)
        s_all = buf[: gr * b * width].reshape(gr * b, width)
        tv = s_all[:, t0 - c0 : t0 - c0 + nb * b] if use_tile else None  # [rows, blocks·b]
        acc: np.ndarray | None = None
        for h in heads:
            if tv is None and h not in missing:
                continue
            s_all[:, c1 - c0 :] = _NEG  # padding past the last key: masked
            s_all[nr:] = _NEG  # padding past the last row
            s = layer.logits(h, r0, r1, c0, c1, s_all)  # [rows, keys], -inf where masked
            if h in missing:
                # one head's max tile needs no weights: each row's block maxima of the logits,
                # taken before the softmax below turns them into weights in place
                pre = None
                if tv is not None and agg is None and reduce == "max":
                    pre = tv.reshape(gr * b, nb, b).max(axis=2)  # [row, block]
                    if skip0 and t0 == 0:
                        pre[:, 0] = tv[:, 1:b].max(axis=1) if b > 1 else _NEG
                top = s.max(axis=1)
                if layer.sinks is not None:
                    top = np.maximum(top, np.float32(layer.sinks[h]))
                top[~np.isfinite(top)] = 0.0  # a row with every key masked
                s -= top[:, None]
                np.exp(s, out=s)
                total = s.sum(axis=1, dtype=np.float32)
                if layer.sinks is not None:
                    total += np.exp(np.float32(layer.sinks[h]) - top)
                total[total == 0] = 1.0
                norms[h][0][r0:r1] = top
                norms[h][1][r0:r1] = total
                if tv is None:
                    continue
                if pre is not None:  # log weight = logit − top − log(total)
                    pre[:nr] -= (top + np.log(total))[:, None]
                    acc = np.exp(pre.reshape(gr, b, nb).max(axis=1))
                    continue
                s_all[:, c1 - c0 :] = 0.0  # padding: weight 0
                s_all[nr:] = 0.0
                if skip0 and t0 == 0:
                    tv[:, 0] = 0.0
                lin = True
            else:
                assert tv is not None
                top, total = norms[h][0][r0:r1], norms[h][1][r0:r1]
                if skip0 and t0 == 0:
                    tv[:, 0] = _NEG
                lin = False
            if agg is None and reduce == "max" or agg == "max":
                # log weights: s - top - log(total)
                if lin:
                    with np.errstate(divide="ignore"):
                        np.log(tv, out=tv)
                    tv[:nr] -= np.log(total)[:, None]
                else:  # one pass: a row's whole offset at once
                    tv[:nr] -= (top + np.log(total))[:, None]
                if agg is None:
                    acc = np.exp(_fold(tv, gr, b, nb, "max"))
                elif acc is None:
                    acc = tv.copy()
                else:
                    np.maximum(acc, tv, out=acc)
                continue
            # weights themselves: one head's sum, or the mean over heads
            if not lin:
                tv[:nr] -= top[:, None]
                np.exp(tv, out=tv)
            tv[:nr] *= (1 / total)[:, None]
            if agg is None:
                acc = _fold(tv, gr, b, nb, "sum")
            elif acc is None:
                acc = tv.copy()
            else:
                acc += tv
        if acc is None:
            return
        if agg == "max":
            acc = np.exp(_fold(acc, gr, b, nb, "max")) if reduce == "max" else _fold(
                np.exp(acc), gr, b, nb, "sum")
        elif agg == "mean":
            acc = _fold(acc, gr, b, nb, reduce) / len(heads)
        ok = _allowed(layer, r0, r1, t0, nb, b, skip0)
        r_out, c_out = (r0 - q0) // b, (t0 - k0) // b
        out[r_out : r_out + gr, c_out : c_out + nb] = np.where(ok, acc, np.nan)

    # Chunks of rows on one thread per core, interleaved (causal rows grow wider down the
    # matrix); each writes its own rows of the tile and of the normalisers.
    workers = max(1, min(len(chunks), os.cpu_count() or 1))

    def part(i: int) -> None:
        buf = np.empty(step * (nk + 2 * b), dtype=np.float32)
        for r0, r1, in_tile in chunks[i::workers]:
            one_chunk(r0, r1, in_tile, buf)

    map_threads(part, range(workers))
    if missing and cache is not None:
        for h in missing:
            top, total = norms[h]
            cache.put(st, ("norms", li, h), (top, total), top.nbytes + total.nbytes)
    return out
