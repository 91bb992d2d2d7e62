"""The standalone page's long representation: any head at any zoom, with no server.

A run whose dense payload would be too big (every weight, one byte each, grows as n²) travels
as, per head (``encode_head``):

* a **pyramid**: the head's weights reduced over ``block × block`` blocks (``block`` a power of
  two, chosen so a side has at most ``OVERVIEW`` blocks), by max and by sum, one byte per block
  on a log scale (``DECADES`` decades below the head's largest block, 253 steps: within 2.8 %
  of the true block value; below that range, 0). A block whose cells are all masked has code
  255. The first block column is also kept without key 0 (``rest``), so "ignore the first
  token" can leave key 0 out of the colour scale at every zoom.
* **exact data near where attention is**: per query row its ``k`` largest weights (the keys,
  sorted, delta-coded; the values as today's payload codes them: ``code / 128 × row max``), the
  row's max, and an upper bound for every weight it does not keep (``bound / 128 × row max``,
  rounded up). A zoomed-in cell that is not kept shows "< bound", never a made-up value.

and per stack, each distinct layer mask as the visible key intervals of each row
(``encode_mask``), and per layer the pyramids of the mean and of the max of its heads
(``pack_pyramid``: the heads' weights averaged or maxed cell by cell, then reduced over blocks
by max and by sum, as ``tiles.tile`` defines them — exact up to the codes), so the mean or max
of heads over the whole matrix decodes one chunk, not every head. A mean or max cell that some
head did not keep is shown as an upper bound.

Each piece is deflated alone, so the viewer decodes only the head it shows. ``k`` comes from a
byte budget (``BUDGET``), measured on the first head. Chunk layout (before deflate), all
little-endian::

    f32 hi_max, f32 hi_sum, f32 rowmax[nq] |
    u8 max[Pq, Pk], u8 sum[Pq, Pk], u8 rest_max[Pq], u8 rest_sum[Pq], u8 bound[nq], u8 count[nq] |
    u8 key delta planes[index_bytes][entries] (low byte first) | u8 codes[entries]

Mask chunk (before deflate): ``u32 count[nq]`` (intervals per row), then ``u32 [start, end)``
pairs, row by row. Layer chunks (``agg/mean/<stack>/<layer>``, ``agg/max/<stack>/<layer>``,
before deflate): ``f32 hi_max, f32 hi_sum | u8 max[Pq, Pk], u8 sum[Pq, Pk], u8 rest_max[Pq],
u8 rest_sum[Pq]``.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import AttnmapError
from .._parallel import map_threads
from ..qkweights import QKLayers, Scratch, row_spans
from .colours import DEFAULT_CMAP
from .payload import LEVELS, MAGIC, PAYLOAD_VERSION, _json_bytes, check_drawable, header

LONG_VERSION = 1
ENCODING = "pyramid-topk-1"
OVERVIEW = 512  # at most this many blocks along a side of the pyramid
DECADES = 6  # the pyramid's log scale spans this many decades below the head's largest block
STEPS = 253  # codes 1..254 are log-spaced; 0 = below the range (or 0); 255 = masked
MASKED = 255
K_CHOICES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
BUDGET = 110_000_000  # bytes of long data in a page (its base-85 text is 1.25× this)
# `auto` picks the long representation above these: one head's n² cells, or all heads' cells.
DENSE_MAX_HEAD_CELLS = 2048 * 2048
DENSE_MAX_CELLS = 2 ** 28
LEVEL = 6
APPROXIMATE = (
    "overview blocks within 2.8 % (log codes, 6 decades); cells each row keeps within 1/256 "
    "of the row max; other cells are shown as an upper bound; mean/max of heads: blocks of the "
    "cellwise mean or max exact up to the codes, cells a head did not keep as a bound"
)


def _deflate(data: bytes) -> bytes:
    # the run-length strategy: on a head's chunk (4,096 tokens, top-96) 3 % smaller than the
    # default strategy and a third of its time (16 ms against 44 ms)
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return c.compress(data) + c.flush()


def block_size(n: int) -> int:
    """The pyramid's block: the smallest power of two giving at most OVERVIEW blocks a side."""
    b = 1
    while -(-n // b) > OVERVIEW:
        b *= 2
    return b


def choose(run: Any) -> str:
    """``"dense"`` or ``"long"``: the representation ``representation="auto"`` picks."""
    total = 0
    for st in run.stacks.values():
        n_layers, n_heads, nq, nk = st.shape
        if nq * nk > DENSE_MAX_HEAD_CELLS:
            return "long"
        total += n_layers * n_heads * nq * nk
    return "long" if total > DENSE_MAX_CELLS else "dense"


# --- quantisation --------------------------------------------------------------------------------
def log_codes(x: np.ndarray, hi: float, masked: np.ndarray) -> np.ndarray:
    """Block values → codes: 0 (below hi·10^-DECADES), 1..254 log-spaced up to hi, 255 masked."""
    out = np.full(x.shape, MASKED, np.uint8)
    seen = ~np.asarray(masked, dtype=bool)
    codes = np.zeros(int(np.count_nonzero(seen)), np.uint8)
    if hi > 0:  # in place, and only where not masked (a causal pyramid: half the blocks)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.maximum(x[seen], 0) / hi
            np.log10(t, out=t)
            t += DECADES
            t /= DECADES  # 0..1 in range
            ok = (t >= -0.5 / STEPS) & (t < np.inf)  # not NaN, -inf (0) or inf
        c = t[ok]
        c *= STEPS
        np.rint(c, out=c)
        c += 1
        np.clip(c, 1, STEPS + 1, out=c)
        codes[ok] = c.astype(np.uint8)
    out[seen] = codes
    return out


def log_values(codes: np.ndarray, hi: float) -> np.ndarray:
    """Inverse of :func:`log_codes`: float32, NaN where masked."""
    c = codes.astype(np.float64)
    v = hi * 10.0 ** (DECADES * ((c - 1) / STEPS - 1))
    v[codes == 0] = 0.0
    v[codes == MASKED] = np.nan
    return v.astype(np.float32)


# --- one head ------------------------------------------------------------------------------------
ROWS = 256  # query rows computed and reduced at a time (a multiple of every block size used)


def reduce_head(rows: Any, masked: np.ndarray, block: int, k: int) -> dict[str, np.ndarray]:
    """Reduce one head, given as row chunks ``rows(r0, r1) -> (k0, float32 [r1 - r0, key])``
    (the keys from `k0` on; those outside are masked for the chunk's rows, and masked cells
    inside hold 0; the chunk may be overwritten): the pyramid (block max and sum, masked cells
    left out, NaN where all are masked; the first block column without key 0 as ``rest_*``)
    and each row's `k` largest visible weights (``count``, ``keys`` ascending per row,
    ``values``, ``rowmax``, ``bound``: the largest visible weight not kept, 0 when none; of
    equal weights at the cut, the smaller keys are kept).
    """
    def one(r0: int, r1: int, heads: list[int]) -> tuple[int, np.ndarray]:
        k0, w = rows(r0, r1)
        return k0, w[None]

    red = LayerReducer(masked, block, k, 1, aggregate=False)
    for r0 in red.starts():
        red.chunk(one, r0)
    return red.heads[0].result()


def row_step(block: int) -> int:
    """Query rows reduced at a time: ROWS, in whole blocks."""
    return max(ROWS // block, 1) * block


class LayerReducer:
    """Every head of a layer reduced as :func:`reduce_head` reduces one, and with
    `aggregate` the pyramids of the mean and of the max of its heads taken cell by cell
    before the blocks are reduced (as ``tiles.tile`` defines them), a chunk of rows at a
    time: :meth:`chunk` for each of :meth:`starts`, in any order and on any threads (each
    chunk writes its own rows), then ``heads[h].result()`` and ``aggs[how].result()``.

    A chunk's rows come from ``rows(r0, r1, heads) -> (k0, float32 [head, r1 - r0, key])``
    (:func:`reduce_head`'s contract, for some heads), a group of heads at a time of at most
    `cells` values, so the cellwise mean and max cost two running arrays of one chunk.
    """

    def __init__(self, masked: np.ndarray, block: int, k: int, n_heads: int, *,
                 aggregate: bool = True, cells: int = 1 << 23) -> None:
        self.masked, self.block, self.k, self.n_heads = masked, block, k, n_heads
        nq, nk = masked.shape
        pq, pk = -(-nq // block), -(-nk // block)
        self.step = row_step(block)
        self.group = max(1, cells // max(self.step * nk, 1))
        self.heads = [_Reduced(nq, pq, pk) for _ in range(n_heads)]
        self.aggs = ({"mean": _Reduced(nq, pq, pk), "max": _Reduced(nq, pq, pk)}
                     if aggregate else {})
        self._bufs = threading.local()

    def starts(self) -> range:
        return range(0, self.masked.shape[0], self.step)

    def chunk(self, rows: Any, r0: int) -> None:
        nq, nk = self.masked.shape
        r1 = min(nq, r0 + self.step)
        block = self.block
        buf = getattr(self._bufs, "buf", None)
        if buf is None:
            buf = self._bufs.buf = np.empty(self.step * (-(-nk // block)) * block, np.float32)
        total = top = None
        k0 = kend = 0
        for g0 in range(0, self.n_heads, self.group):
            hs = list(range(g0, min(self.n_heads, g0 + self.group)))
            k0, w = rows(r0, r1, hs)  # [head, row, key from k0]
            kend = k0 + w.shape[2]  # no row of the chunk sees a key from here on
            if kend == k0:  # no row sees any key: nothing kept, rowmax and bound 0
                return
            if self.aggs:  # before the heads' reductions overwrite their rows
                if total is None or top is None:
                    size = (2, w.shape[1], w.shape[2])
                    both = getattr(self._bufs, "aggs", None)
                    if both is None or both.size < 2 * w.shape[1] * w.shape[2]:
                        both = self._bufs.aggs = np.empty(size, np.float32)
                    both = both.reshape(-1)[: 2 * w.shape[1] * w.shape[2]].reshape(size)
                    total, top = both[0], both[1]
                    np.sum(w, axis=0, out=total)
                    np.max(w, axis=0, out=top)
                else:
                    total += w.sum(axis=0)
                    np.maximum(top, w.max(axis=0), out=top)
            for i, h in enumerate(hs):
                self.heads[h].chunk(w[i], self.masked, r0, r1, k0, kend, block, self.k, buf)
        if total is not None and top is not None:
            total /= np.float32(self.n_heads)
            self.aggs["mean"].chunk(total, self.masked, r0, r1, k0, kend, block, 0, buf)
            self.aggs["max"].chunk(top, self.masked, r0, r1, k0, kend, block, 0, buf)


class _Reduced:
    """One head's (or one aggregate's) pyramid planes and kept cells, filled chunk by chunk."""

    def __init__(self, nq: int, pq: int, pk: int) -> None:
        self.out = {name: np.full(n, np.nan, np.float32) for name, n in
                    (("max", (pq, pk)), ("sum", (pq, pk)), ("rest_max", pq), ("rest_sum", pq))}
        self.rowmax = np.zeros(nq, np.float32)
        self.bound = np.zeros(nq, np.float32)
        self.count = np.zeros(nq, np.int64)
        self.keys: dict[int, np.ndarray] = {}  # by a chunk's first row (chunks on threads)
        self.values: dict[int, np.ndarray] = {}

    def chunk(self, w: np.ndarray, masked: np.ndarray, r0: int, r1: int, k0: int, kend: int,
              block: int, k: int, buf: np.ndarray) -> None:
        """Rows r0..r1 over keys k0..kend (`w`, may be overwritten); `k` 0: pyramid only."""
        n = r1 - r0
        c0, c1 = k0 // block, -(-kend // block)  # the block columns holding a visible cell
        a0, a1 = c0 * block, c1 * block  # [a0, a1): the keys of those columns
        nb = -(-n // block)
        if ((a0, a1, nb * block) == (k0, kend, n) and w.dtype == np.float32
                and w.flags.c_contiguous):
            c = w  # already whole blocks: reduced where it lies
        else:  # padded with 0 (a masked cell's weight) to whole blocks
            c = buf[: nb * block * (a1 - a0)].reshape(nb * block, a1 - a0)
            c[:n, : k0 - a0] = 0
            np.copyto(c[:n, k0 - a0 : kend - a0], w)
            c[:n, kend - a0 :] = 0
            c[n:] = 0
        b4 = c.reshape(nb, block, c1 - c0, block)  # [bq, q, bk, k]
        # sums first, while masked cells and padding hold 0; rows first (whole rows at a
        # time), then the few keys left: ~5× faster than keys first
        bsum = b4.sum(axis=1).sum(axis=2)
        fsum = b4[:, :, 0, 1:].sum(axis=(1, 2)) if block > 1 and c0 == 0 else None
        # then every masked cell and the padding to -1, below any weight: only the columns
        # some row of the block may not see (a causal block: its own diagonal square)
        c[:n, : k0 - a0] = -1
        c[:n, kend - a0 :] = -1
        c[n:] = -1
        hidden = masked[r0:r1, k0:kend]  # [row, key from k0]
        cols = np.flatnonzero(hidden.any(axis=0))
        if cols.size:
            h0, h1 = int(cols[0]), int(cols[-1]) + 1
            np.copyto(c[:n, k0 - a0 + h0 : k0 - a0 + h1], np.float32(-1),
                      where=hidden[:, h0:h1])
        if np.isnan(bsum).any():  # a NaN weight (none from softmax) as masked
            np.fmax(c, np.float32(-1), out=c)
        # block max on the bits as int32 (same order for -1 and floats ≥ +0, ~5× faster):
        # over the block's rows, then key pairs halved (not a max over a short last axis)
        m = c.view(np.int32).reshape(nb, block, -1).max(axis=1)  # [bq, key]
        while m.shape[1] > c1 - c0:
            m = np.maximum(m[:, 0::2], m[:, 1::2])
        bmax = m.view(np.float32)  # [bq, bk]
        b0, b1 = r0 // block, r0 // block + nb
        out = self.out
        out["max"][b0:b1, c0:c1] = np.where(bmax < 0, np.nan, bmax)  # others stay NaN
        out["sum"][b0:b1, c0:c1] = np.where(bmax < 0, np.nan, bsum)
        if fsum is not None:
            fmax = b4[:, :, 0, 1:].max(axis=(1, 2))
            out["rest_max"][b0:b1] = np.where(fmax < 0, np.nan, fmax)
            out["rest_sum"][b0:b1] = np.where(fmax < 0, np.nan, fsum)
        if k:
            top = _top_k(c[:n], k)
            self.rowmax[r0:r1], self.count[r0:r1], self.bound[r0:r1] = top[0], top[1], top[2]
            self.keys[r0] = top[3] + a0
            self.values[r0] = top[4]

    def result(self) -> dict[str, np.ndarray]:
        order = sorted(self.keys)  # rows in order
        return {**self.out, "count": self.count,
                "keys": np.concatenate([self.keys[r] for r in order] or
                                       [np.zeros(0, np.int64)]).astype(np.int64),
                "values": np.concatenate([self.values[r] for r in order] or
                                         [np.zeros(0, np.float32)]).astype(np.float32),
                "rowmax": self.rowmax, "bound": self.bound}


def _top_k(c: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Each row's `k` largest cells of `c` [row, key] float32 (masked cells -1, weights ≥ +0,
    never -0): rowmax, count, bound (the largest visible cell not kept, 0 when none), then the
    kept keys (ascending in each row) and their values, rows one after the other.

    One partial sort of the values (no indices) gives each row's (k + 1)-th largest, t. A row
    keeps its cells above t and, of those equal to t, the first by key until it has k (t is
    the bound); a row with t masked has at most k visible cells and keeps them all. No sort.
    """
    n, w = c.shape
    if k >= w:  # every cell of the row is kept
        keep = c >= 0
        ci = np.broadcast_to(np.arange(w), (n, w))
        return (np.maximum(c.max(axis=1), 0), keep.sum(axis=1), np.zeros(n, np.float32),
                ci[keep], c[keep])
    # a float ≥ +0 and -1 order as their bits read as int32 do; sorting those is ~1.6× faster
    p = np.partition(c.view(np.int32), w - k - 1, axis=1)  # [row, key]: the k + 1 largest last
    t = p[:, w - k - 1].view(np.float32)  # [row] the (k + 1)-th largest
    rowmax = np.maximum(p[:, w - k - 1 :].max(axis=1).view(np.float32), 0)
    cut = np.maximum(t, 0)  # t masked: the row's visible cells
    flat = np.flatnonzero(c >= cut[:, None])  # row-major: keys ascending in each row
    ri = flat // w
    ci = flat - ri * w
    vals = c.reshape(-1)[flat] if c.flags.c_contiguous else c[ri, ci]
    tr = t[ri]
    at_t = vals == tr  # one a row with t visible, more where weights tie at t
    if np.count_nonzero(at_t) == np.count_nonzero(t >= 0):  # no ties: k above t in each row
        keep = ~at_t
    else:  # a row keeps its cells above t, then those at t by key until it has k
        above = np.bincount(ri[~at_t], minlength=n)  # [row]
        before = np.cumsum(at_t) - at_t  # cells at t before each cell, from the start
        counts = np.bincount(ri, minlength=n)
        starts = np.cumsum(counts) - counts
        has = counts > 0
        first = np.zeros(n, np.int64)
        first[has] = before[starts[has]]
        keep = ~at_t | (before - first[ri] < k - above[ri])
    return rowmax, np.bincount(ri[keep], minlength=n), cut, ci[keep], vals[keep]


def _dense_rows(w: np.ndarray, masked: np.ndarray) -> Any:
    return lambda r0, r1: (0, _plus_zero(np.where(masked[r0:r1], np.float32(0), w[r0:r1])))


def _plus_zero(x: np.ndarray) -> np.ndarray:
    x += np.float32(0)  # -0 → +0 (softmax never gives -0; weights from elsewhere might)
    return x


def pyramid(w: np.ndarray, masked: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """The pyramid part of :func:`reduce_head` for a dense head [query, key]."""
    masked = np.asarray(masked, dtype=bool)
    r = reduce_head(_dense_rows(w, masked), masked, block, 1)
    return {name: r[name] for name in ("max", "sum", "rest_max", "rest_sum")}


def top_k(w: np.ndarray, masked: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The top-k part of :func:`reduce_head` for a dense head [query, key]."""
    masked = np.asarray(masked, dtype=bool)
    r = reduce_head(_dense_rows(w, masked), masked, 1, k)
    return {name: r[name] for name in ("count", "keys", "values", "rowmax", "bound")}


def subset(r: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """`r` (from :func:`reduce_head` with some k' ≥ k) cut down to each row's k largest."""
    count = r["count"]
    width = int(count.max(initial=0))
    if k >= width:
        return r
    nq = count.size
    rows = np.repeat(np.arange(nq), count)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    at = np.arange(rows.size) - starts[rows]  # each entry's place in its row (keys ascending)
    v = np.full((nq, width), -np.inf, np.float32)  # [row, entry]
    v[rows, at] = r["values"]
    # rank in its row by value (0 = largest), ties by key: a stable sort of keys ascending
    order = np.argsort(-v, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(width)[None, :], axis=1)
    keep = rank[rows, at] < k
    # the new bound: the largest value dropped, or the old bound
    dropped = np.where(rank >= k, v, -1).max(axis=1)
    return {**r, "count": np.minimum(count, k), "keys": r["keys"][keep],
            "values": r["values"][keep],
            "bound": np.maximum(r["bound"], dropped).astype(np.float32)}


def pack(r: dict[str, np.ndarray], nk: int) -> bytes:
    """A reduced head (:func:`reduce_head`) as a deflated chunk (layout: module docstring)."""
    nq = r["rowmax"].size
    hi_max = float(np.nanmax(r["max"])) if np.isfinite(r["max"]).any() else 0.0
    hi_sum = float(np.nanmax(r["sum"])) if np.isfinite(r["sum"]).any() else 0.0
    rowmax = r["rowmax"]
    safe = np.where(rowmax > 0, rowmax, 1).astype(np.float32)
    count = r["count"]
    rows = np.repeat(np.arange(nq), count)
    codes = np.rint(r["values"] / safe[rows] * LEVELS).astype(np.uint8)
    bound = np.minimum(np.ceil(r["bound"] / safe * LEVELS - 1e-6), LEVELS).astype(np.uint8)
    keys = r["keys"]
    starts = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    delta = keys.copy()
    delta[1:] -= keys[:-1]
    firsts = starts[count > 0]
    delta[firsts] = keys[firsts]  # each row starts absolute
    planes = [((delta >> (8 * i)) & 0xFF).astype(np.uint8).tobytes()
              for i in range(index_bytes(nk))]
    body = b"".join([
        np.array([hi_max, hi_sum], "<f4").tobytes(), rowmax.astype("<f4").tobytes(),
        log_codes(r["max"], hi_max, np.isnan(r["max"])).tobytes(),
        log_codes(r["sum"], hi_sum, np.isnan(r["sum"])).tobytes(),
        log_codes(r["rest_max"], hi_max, np.isnan(r["rest_max"])).tobytes(),
        log_codes(r["rest_sum"], hi_sum, np.isnan(r["rest_sum"])).tobytes(),
        bound.tobytes(), count.astype(np.uint8).tobytes(), *planes, codes.tobytes(),
    ])
    return _deflate(body)


PLANES = ("max", "sum", "rest_max", "rest_sum")


def pack_pyramid(r: dict[str, np.ndarray]) -> bytes:
    """The pyramid of a layer's heads taken together (``LayerReducer.aggs``, the mean or the
    max of the heads cell by cell, then reduced over blocks) as a deflated chunk (layout:
    module docstring)."""
    planes = {n: np.asarray(r[n], np.float32) for n in PLANES}
    hi = {n: float(np.nanmax(planes[n])) if np.isfinite(planes[n]).any() else 0.0
          for n in ("max", "sum")}
    body = b"".join([np.array([hi["max"], hi["sum"]], "<f4").tobytes()] + [
        log_codes(planes[n], hi[n.removeprefix("rest_")], np.isnan(planes[n])).tobytes()
        for n in PLANES])
    return _deflate(body)


def decode_pyramid(chunk: bytes, nq: int, nk: int, block: int) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_pyramid` (values as the viewer reads them; for tests)."""
    raw = zlib.decompress(chunk)
    pq, pk = -(-nq // block), -(-nk // block)
    if len(raw) != 8 + 2 * pq * pk + 2 * pq:
        raise AttnmapError(f"long layer chunk holds {len(raw)} bytes, not "
                           f"{8 + 2 * pq * pk + 2 * pq}")
    hi_max, hi_sum = struct.unpack_from("<ff", raw)
    c = np.frombuffer(raw, np.uint8, offset=8)
    n = pq * pk
    return {"max": log_values(c[:n].reshape(pq, pk), hi_max),
            "sum": log_values(c[n:2 * n].reshape(pq, pk), hi_sum),
            "rest_max": log_values(c[2 * n:2 * n + pq], hi_max),
            "rest_sum": log_values(c[2 * n + pq:], hi_sum)}


def encode_head(w: np.ndarray, masked: np.ndarray, block: int, k: int) -> bytes:
    """One dense head [query, key] as a deflated chunk (layout: module docstring)."""
    masked = np.asarray(masked, dtype=bool)
    return pack(reduce_head(_dense_rows(np.asarray(w), masked), masked, block, k),
                masked.shape[1])


def index_bytes(nk: int) -> int:
    return 2 if nk <= 65536 else 4


def decode_head(chunk: bytes, nq: int, nk: int, block: int) -> dict[str, Any]:
    """Inverse of :func:`encode_head` (values as the viewer reads them; for tests)."""
    raw = zlib.decompress(chunk)
    pq, pk = -(-nq // block), -(-nk // block)
    at = 0

    def take(n: int, dtype: Any) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(raw, dtype=dtype, count=n, offset=at)
        at += a.nbytes
        return a

    hi_max, hi_sum = (float(x) for x in take(2, "<f4"))
    rowmax = take(nq, "<f4")
    pmax, psum = take(pq * pk, np.uint8).reshape(pq, pk), take(pq * pk, np.uint8).reshape(pq, pk)
    rmax, rsum = take(pq, np.uint8), take(pq, np.uint8)
    bound, count = take(nq, np.uint8), take(nq, np.uint8).astype(np.int64)
    total = int(count.sum())
    delta = np.zeros(total, np.int64)
    for i in range(index_bytes(nk)):
        delta |= take(total, np.uint8).astype(np.int64) << (8 * i)
    codes = take(total, np.uint8)
    if at != len(raw):
        raise AttnmapError(f"long head chunk holds {len(raw)} bytes, not the {at} it says")
    rows = np.repeat(np.arange(nq), count)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    first = np.zeros(total, bool)
    first[starts[count > 0]] = True
    # cumulative sum of deltas, restarted at each row's first (absolute) key
    keys = np.cumsum(delta)
    base = np.where(first, keys - delta, 0)
    keys = keys - np.maximum.accumulate(base)
    return {
        "max": log_values(pmax, hi_max), "sum": log_values(psum, hi_sum),
        "rest_max": log_values(rmax, hi_max), "rest_sum": log_values(rsum, hi_sum),
        "rowmax": rowmax, "bound": bound.astype(np.float32) / LEVELS * rowmax,
        "count": count, "rows": rows, "keys": keys,
        "values": codes.astype(np.float32) / LEVELS * rowmax[rows],
    }


# --- masks ---------------------------------------------------------------------------------------
def encode_mask(masked: np.ndarray) -> bytes:
    """A mask [query, key] (True = hidden) as each row's visible ``[start, end)`` intervals."""
    m = np.asarray(masked, dtype=bool)
    nq, nk = m.shape
    vis = np.zeros((nq, nk + 2), np.int8)
    vis[:, 1:-1] = ~m
    d = np.diff(vis, axis=1)  # +1 where a visible run starts, -1 one past its end
    r_start, c_start = np.nonzero(d == 1)
    _, c_end = np.nonzero(d == -1)
    count = np.bincount(r_start, minlength=nq).astype("<u4")
    pairs = np.stack([c_start, c_end], axis=1).astype("<u4")  # row-major order from nonzero
    return _deflate(count.tobytes() + pairs.tobytes())


def decode_mask(chunk: bytes, nq: int, nk: int) -> np.ndarray:
    raw = zlib.decompress(chunk)
    count = np.frombuffer(raw, "<u4", nq)
    pairs = np.frombuffer(raw, "<u4", offset=4 * nq).reshape(-1, 2)
    out = np.ones((nq, nk), bool)
    rows = np.repeat(np.arange(nq), count)
    for r, (a, b) in zip(rows, pairs, strict=True):
        out[r, a:b] = False
    return out


# --- the page ------------------------------------------------------------------------------------
@dataclass
class LongData:
    """What the long page carries: the payload (header, no layer chunks) and keyed chunks."""

    payload: bytes
    chunks: list[tuple[str, bytes]] = field(default_factory=list)
    block: int = 1
    k: int = 0
    tokens: int = 0
    encoded: list[Any] | None = None  # build's `encode` of each chunk, in order, when given

    @property
    def nbytes(self) -> int:
        return len(self.payload) + sum(len(c) for _, c in self.chunks)

    def describe(self) -> str:
        return (f"long run ({self.tokens:,} tokens): pyramid of {self.block}×{self.block} "
                f"blocks + top-{self.k} per row")


def _spans(masked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row of a mask [query, key]: whether it sees any key, the first key it sees
    and one past the last (0 and 0 for a row that sees none)."""
    first, end, _ = row_spans(masked)
    return end > first, first, end


def _rows(run: Any, stack: str, layer: int, head: int,
          spans: dict[int, tuple[np.ndarray, ...]] | None = None) -> Any:
    """``rows(r0, r1) -> (k0, [row, key] float32)``: query rows [r0, r1) of one head (see
    :func:`_layer_rows`)."""
    rows = _layer_rows(run, stack, layer, spans)

    def one(r0: int, r1: int) -> tuple[int, np.ndarray]:
        k0, w = rows(r0, r1, [head])
        return k0, w[0]

    return one


def _layer_rows(run: Any, stack: str, layer: int,
                spans: dict[int, tuple[np.ndarray, ...]] | None = None,
                local: threading.local | None = None) -> Any:
    """``rows(r0, r1, heads) -> (k0, [head, row, key] float32)``: query rows [r0, r1) of some
    heads over the keys from `k0` on that they may see, computed from queries and keys where
    the run keeps them (never a whole head at once; memory reused per thread, each result
    valid until that thread's next call); keys outside the span are masked for those rows.
    `spans`: :func:`_spans` of each layer's mask by ``id``, shared by the layers of a run
    (one mask's spans: ≈40 ms at 4,095 tokens, once per head before); `local`: where each
    thread keeps its memory, shared by the layers of a run (one thread's memory, not one per
    layer)."""
    st = run.stack(stack)
    layers = st.layers
    n_heads = st.n_heads
    if isinstance(layers, QKLayers):
        masked = layers.masks[layer]
        got = spans.get(id(masked)) if spans is not None else None
        any_row, first, end = got if got is not None else _spans(masked)
        mine = local if local is not None else threading.local()

        def rows(r0: int, r1: int, heads: list[int]) -> tuple[int, np.ndarray]:
            live = any_row[r0:r1]
            if not live.any():
                return 0, np.zeros((len(heads), r1 - r0, 0), np.float32)
            k0, k1 = int(first[r0:r1][live].min()), int(end[r0:r1][live].max())
            scratch = getattr(mine, "scratch", None)
            if scratch is None:
                scratch = mine.scratch = Scratch()
            which = None if heads == list(range(n_heads)) else heads  # all: per key head
            return k0, layers.rows(layer, r0, r1, k0, k1, heads=which, scratch=scratch)

        return rows
    w = layers[layer]
    masked = np.asarray(st.mask(layer), dtype=bool)
    # masked cells as exactly 0, as softmax gives them (weights from elsewhere may hold noise)
    return lambda r0, r1, heads: (0, _plus_zero(np.where(
        masked[r0:r1], np.float32(0), np.asarray(w[heads, r0:r1], dtype=np.float32))))


def _mask(st: Any, layer: int) -> np.ndarray:
    return np.asarray(st.mask(layer), dtype=bool)


def _choose_k(sizes: dict[int, int], heads: int, budget: int) -> int:
    """The largest k whose chunks, at the sizes measured on one head, fit `budget`."""
    fits = [k for k, n in sorted(sizes.items()) if n * heads * 1.05 <= budget]  # heads differ
    return fits[-1] if fits else min(sizes)


def build(run: Any, *, cmap: str = DEFAULT_CMAP, budget: int = BUDGET, k: int | None = None,
          progress: Any = None, encode: Callable[[bytes], Any] | None = None) -> LongData:
    """The long representation of `run`: payload header plus one chunk per head and mask.
    `encode` (e.g. the page's text form of a chunk) runs on the worker threads as each chunk
    is made; its results come back in ``encoded``."""
    check_drawable(run)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 255):
        raise AttnmapError(f"k must be a whole number in 1..255 (not {k!r})")
    n = max(max(s.shape[2], s.shape[3]) for s in run.stacks.values())
    block = block_size(n)
    heads = sum(s.n_layers * s.n_heads for s in run.stacks.values())
    chunks: list[tuple[str, bytes]] = []
    texts: list[Any] = []  # encode(chunk) where the threads made it, else None
    stacks: dict[str, Any] = {}
    spans: dict[int, tuple[np.ndarray, ...]] = {}
    enc = encode or (lambda blob: None)
    for name, st in run.stacks.items():
        masks, index = st.distinct_masks()
        for i, m in enumerate(masks):
            chunks.append((f"mask/{name}/{i}", encode_mask(m)))
        stacks[name] = {"masks": index}
        nk = st.shape[3]
        if isinstance(st.layers, QKLayers):
            for li, m in enumerate(st.layers.masks):  # alive as long as the run: ids stay
                if id(m) not in spans:
                    first, end, _ = st.layers.spans(li)  # once per mask, kept by the run
                    spans[id(m)] = (end > first, first, end)
        if k is None and st.n_layers:  # the first head measures what each k costs
            # through map_threads for its one BLAS thread: with OpenBLAS's own threads this
            # head took 0.4–1.1 s here instead of 0.16 s (4,095 tokens, a busy machine)
            mask = _mask(st, 0)

            def widest(rows: Any, m: np.ndarray = mask) -> dict[str, np.ndarray]:
                return reduce_head(rows, m, block, K_CHOICES[-1])

            r = map_threads(widest, [_rows(run, name, 0, 0, spans)])[0]

            def sized(kc: int, r: dict[str, np.ndarray] = r, nk: int = nk) -> bytes:
                return pack(subset(r, kc), nk)

            sizes = dict(zip(K_CHOICES, map(len, map_threads(sized, K_CHOICES)), strict=True))
            k = _choose_k(sizes, heads, budget)
        # every layer's heads together, a chunk of rows per job (so a run of few layers
        # still fills the cores); a layer's reducer is made by its first chunk and packed
        # and dropped by its last, so only the layers in progress hold memory
        local = threading.local()  # each thread's scratch, shared by the layers
        starts = range(0, st.shape[2], row_step(block))  # LayerReducer.starts
        layer_rows = [_layer_rows(run, name, li, spans, local) for li in range(st.n_layers)]
        jobs = [(li, r0) for li in range(st.n_layers) for r0 in starts]
        reducers: dict[int, LayerReducer] = {}
        left = [len(starts)] * st.n_layers
        lock = threading.Lock()
        packed: dict[int, list[tuple[str, bytes, Any]]] = {}

        def one(job: tuple[int, int], name: str = name, st: Any = st, nk: int = nk,
                reducers: dict[int, LayerReducer] = reducers, left: list[int] = left,
                lock: threading.Lock = lock,
                packed: dict[int, list[tuple[str, bytes, Any]]] = packed,
                layer_rows: list[Any] = layer_rows, k: int = int(k or 1)) -> None:
            li, r0 = job
            with lock:
                if li not in reducers:
                    reducers[li] = LayerReducer(_mask(st, li), block, k, st.n_heads)
                red = reducers[li]
            red.chunk(layer_rows[li], r0)
            with lock:
                left[li] -= 1
                if left[li]:
                    return
                del reducers[li]
            out = []
            for h, r in enumerate(red.heads):
                blob = pack(r.result(), nk)
                out.append((f"{name}/{li}/{h}", blob, enc(blob)))
            for how, r in red.aggs.items():
                blob = pack_pyramid(r.result())
                out.append((f"agg/{how}/{name}/{li}", blob, enc(blob)))
            packed[li] = out
            if progress is not None:
                progress(st.n_heads)

        map_threads(one, jobs)
        for li in range(st.n_layers):
            chunks += [(key, blob) for key, blob, _ in packed[li]]
            texts += [None] * (len(chunks) - len(texts) - len(packed[li]))
            texts += [t for _, _, t in packed[li]]
    head = header(run, [], cmap=cmap)
    head["long"] = {
        "encoding": ENCODING, "version": LONG_VERSION, "block": block, "k": k,
        "decades": DECADES, "steps": STEPS, "levels": LEVELS,
        "index_bytes": {name: index_bytes(st.shape[3]) for name, st in run.stacks.items()},
        "stacks": stacks, "approximate": APPROXIMATE,
    }
    hb = _json_bytes(head)
    payload = struct.pack("<4sII", MAGIC, PAYLOAD_VERSION, len(hb)) + hb
    encoded = None
    if encode is not None:  # the masks were not encoded on the threads
        encoded = [encode(blob) if t is None else t for (_, blob), t in zip(chunks, texts,
                                                                              strict=True)]
    return LongData(payload, chunks, block, int(k or 0), n, encoded)


def growth(sizes: dict[int, float]) -> float:
    """The exponent a of size ≈ c·nᵃ fitted (least squares in log-log) to {n: size}."""
    ns = sorted(sizes)
    if len(ns) < 2:
        return math.nan
    x = np.log([float(n) for n in ns])
    y = np.log([float(sizes[n]) for n in ns])
    return float(np.polyfit(x, y, 1)[0])
