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
(``encode_mask``), and per layer the pyramid of its heads together (``pack_pyramid``: the max of
the block maxima, the mean of the block sums — exact up to the codes, quantised once from the
heads' exact pyramids), so the mean or max of heads over the whole matrix decodes one chunk, not
every head. A mean or max cell that some head did not keep is shown as an upper bound.

Each piece is deflated alone, so the viewer decodes only the head it shows. ``k`` comes from a
byte budget (``BUDGET``), measured on the first head. Chunk layout (before deflate), all
little-endian::

    f32 hi_max, f32 hi_sum, f32 rowmax[nq] |
    u8 max[Pq, Pk], u8 sum[Pq, Pk], u8 rest_max[Pq], u8 rest_sum[Pq], u8 bound[nq], u8 count[nq] |
    u8 key delta planes[index_bytes][entries] (low byte first) | u8 codes[entries]

Mask chunk (before deflate): ``u32 count[nq]`` (intervals per row), then ``u32 [start, end)``
pairs, row by row. Layer chunk (``agg/<stack>/<layer>``, before deflate): ``f32 hi_max, f32
hi_sum | u8 max[Pq, Pk], u8 sum[Pq, Pk], u8 rest_max[Pq], u8 rest_sum[Pq]`` (sum: the mean).
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import AttnmapError
from .._parallel import map_threads
from ..qkweights import QKLayers, Scratch
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
    "of the row max; other cells are shown as an upper bound; mean/max of heads: block max "
    "and mean of sums exact up to the codes, cells a head did not keep as a bound"
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
    out = np.zeros(x.shape, np.uint8)
    if hi > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (np.log10(np.maximum(x, 0) / hi) + DECADES) / DECADES  # 0..1 in range
        ok = np.isfinite(t) & (t >= -0.5 / STEPS)
        c = np.clip(np.rint(np.where(ok, t, 0) * STEPS) + 1, 1, STEPS + 1)
        out[ok] = c[ok].astype(np.uint8)
    out[masked] = MASKED
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
CAND = 16  # top-k candidates are found through the maxima of CAND-wide key blocks


def reduce_head(rows: Any, masked: np.ndarray, block: int, k: int) -> dict[str, np.ndarray]:
    """Reduce one head, given as row chunks ``rows(r0, r1) -> (k0, float32 [r1 - r0, key])``
    (the keys from `k0` on; those outside are masked for the chunk's rows): the
    pyramid (block max and sum, masked cells left out, NaN where all are masked; the first
    block column without key 0 as ``rest_*``) and each row's `k` largest visible weights
    (``count``, ``keys`` ascending per row, ``values``, ``rowmax``, ``bound``: the largest
    visible weight not kept, 0 when none).

    A row's k largest cells lie in its k blocks (CAND keys wide) with the largest maxima, and
    the next one in the top k + 1 blocks: only those are searched.
    """
    nq, nk = masked.shape
    pq, pk = -(-nq // block), -(-nk // block)
    cw = -(-nk // CAND) * CAND
    width = max(pk * block, cw)
    step = max(ROWS // block, 1) * block
    out = {name: np.full(n, np.nan, np.float32) for name, n in
           (("max", (pq, pk)), ("sum", (pq, pk)), ("rest_max", pq), ("rest_sum", pq))}
    rowmax = np.zeros(nq, np.float32)
    bound = np.zeros(nq, np.float32)
    count = np.zeros(nq, np.int64)
    keys: list[np.ndarray] = []
    values: list[np.ndarray] = []
    buf = np.empty((step, width), np.float32)
    for r0 in range(0, nq, step):
        r1 = min(nq, r0 + step)
        n = r1 - r0
        k0, w = rows(r0, r1)  # [row, key from k0]: keys outside are masked for these rows
        kend = k0 + w.shape[1]  # no row of the block sees a key from here on
        lk = -(-kend // block)  # block columns that hold a visible cell
        lw = max(lk * block, -(-kend // CAND) * CAND)  # the live width, padded
        nb = -(-n // block)
        c = buf[: nb * block, :lw]
        c.fill(0)
        np.copyto(c[:n, k0:kend], w)
        b4 = c[:, : lk * block].reshape(nb, block, lk, block)  # [bq, q, bk, k]
        # sums first, while masked cells and padding hold 0 (a masked cell's weight); rows
        # first (whole rows at a time), then the few keys left: ~5× faster than keys first
        bsum = b4.sum(axis=1).sum(axis=2)
        fsum = b4[:, :, 0, 1:].sum(axis=(1, 2)) if block > 1 and lk else None
        live = min(lw, nk)
        np.copyto(c[:n, :live], np.float32(-1), where=masked[r0:r1, :live])
        c[n:] = -1  # padding: below any weight
        c[:, live:] = -1
        np.fmax(c, np.float32(-1), out=c)  # a NaN weight (none from softmax) as masked
        bmax = b4.max(axis=1).max(axis=2)
        b0, b1 = r0 // block, r0 // block + nb
        out["max"][b0:b1, :lk] = np.where(bmax < 0, np.nan, bmax)  # later blocks stay NaN
        out["sum"][b0:b1, :lk] = np.where(bmax < 0, np.nan, bsum)
        if fsum is not None:
            fmax = b4[:, :, 0, 1:].max(axis=(1, 2))
            out["rest_max"][b0:b1] = np.where(fmax < 0, np.nan, fmax)
            out["rest_sum"][b0:b1] = np.where(fmax < 0, np.nan, fsum)
        # top k per row: one partial sort of the row's live keys
        lc = min(-(-kend // CAND) * CAND, c.shape[1])  # keys that may hold a visible cell
        if lc == 0:  # no row of the block sees any key: nothing kept, rowmax and bound 0
            continue
        rows_c = c[:n, :lc]
        kk = min(k, lc)
        if kk < lc:
            part = np.argpartition(rows_c, lc - kk - 1, axis=1)  # largest kk last
            nxt = np.take_along_axis(rows_c, part[:, lc - kk - 1 : lc - kk], axis=1)[:, 0]
            top = part[:, lc - kk :]
        else:
            top = np.broadcast_to(np.arange(lc), (n, lc))
            nxt = np.full(n, -1, np.float32)
        top = np.sort(top, axis=1)  # keys ascending
        vals = np.take_along_axis(rows_c, top, axis=1)
        rowmax[r0:r1] = np.maximum(vals.max(axis=1), 0)
        keep = vals >= 0
        count[r0:r1] = keep.sum(axis=1)
        bound[r0:r1] = np.maximum(nxt, 0)
        keys.append(top[keep])
        values.append(vals[keep])
    return {**out, "count": count, "keys": np.concatenate(keys).astype(np.int64),
            "values": np.concatenate(values).astype(np.float32), "rowmax": rowmax,
            "bound": bound}


def _dense_rows(w: np.ndarray, masked: np.ndarray) -> Any:
    return lambda r0, r1: (0, np.where(masked[r0:r1], np.float32(0), w[r0:r1]))


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
    if k >= int(count.max(initial=0)):
        return r
    nq = count.size
    rows = np.repeat(np.arange(nq), count)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    # rank of each entry within its row by value (0 = largest); ties by key
    order = np.lexsort((r["keys"], -r["values"], rows))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - np.repeat(starts, count)
    keep = rank < k
    # the new bound: the largest value dropped, or the old bound
    dropped = np.where(~keep, r["values"], -1.0)
    nb = np.full(nq, -1.0)
    np.maximum.at(nb, rows, dropped)
    return {**r, "count": np.minimum(count, k), "keys": r["keys"][keep],
            "values": r["values"][keep], "bound": np.maximum(r["bound"], nb).astype(np.float32)}


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


def fold_pyramid(acc: dict[str, np.ndarray] | None, r: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """A layer's heads together: `acc` (None for the first head) with the pyramid of one more
    head (:func:`reduce_head`) — the max of block maxima, the sum of block sums (float64); NaN
    (all masked) is left out."""
    if acc is None:
        return {n: np.array(r[n], np.float64 if n.endswith("sum") else np.float32)
                for n in PLANES}
    for n in PLANES:
        if n.endswith("sum"):
            a, x = acc[n], r[n]
            np.add(a, x, out=a, where=~np.isnan(a) & ~np.isnan(x))
            np.copyto(a, x, where=np.isnan(a))
        else:
            np.fmax(acc[n], r[n], out=acc[n])
    return acc


def pack_pyramid(acc: dict[str, np.ndarray], heads: int) -> bytes:
    """A layer's folded pyramid (:func:`fold_pyramid` over its `heads`) as a deflated chunk:
    the max of block maxima and the mean of block sums (layout: module docstring)."""
    planes = {n: (acc[n] / heads if n.endswith("sum") else acc[n]).astype(np.float32)
              for n in PLANES}
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

    @property
    def nbytes(self) -> int:
        return len(self.payload) + sum(len(c) for _, c in self.chunks)

    def describe(self) -> str:
        return (f"long run ({self.tokens:,} tokens): pyramid of {self.block}×{self.block} "
                f"blocks + top-{self.k} per row")


def _rows(run: Any, stack: str, layer: int, head: int) -> Any:
    """``rows(r0, r1) -> (k0, [row, key] float32)``: query rows [r0, r1) of one head over the
    keys from `k0` on that they may see, computed from queries and keys where the run keeps
    them (never the whole head at once); keys outside the span are masked for those rows."""
    st = run.stack(stack)
    layers = st.layers
    if isinstance(layers, QKLayers):
        masked = layers.masks[layer]
        seen = np.logical_not(masked)
        any_row: np.ndarray = np.asarray(seen.any(axis=1))
        first = np.where(any_row, seen.argmax(axis=1), 0)
        end = np.where(any_row, masked.shape[1] - seen[:, ::-1].argmax(axis=1), 0)
        scratch = Scratch()

        def rows(r0: int, r1: int) -> tuple[int, np.ndarray]:
            live = any_row[r0:r1]
            if not live.any():
                return 0, np.zeros((r1 - r0, 0), np.float32)
            k0, k1 = int(first[r0:r1][live].min()), int(end[r0:r1][live].max())
            return k0, layers.rows(layer, r0, r1, k0, k1, heads=[head], scratch=scratch)[0]

        return rows
    w = layers[layer]
    masked = np.asarray(st.mask(layer), dtype=bool)
    # masked cells as exactly 0, as softmax gives them (weights from elsewhere may hold noise)
    return lambda r0, r1: (0, np.where(masked[r0:r1], np.float32(0),
                                       np.asarray(w[head, r0:r1], dtype=np.float32)))


def _mask(st: Any, layer: int) -> np.ndarray:
    return np.asarray(st.mask(layer), dtype=bool)


def _choose_k(sizes: dict[int, int], heads: int, budget: int) -> int:
    """The largest k whose chunks, at the sizes measured on one head, fit `budget`."""
    fits = [k for k, n in sorted(sizes.items()) if n * heads * 1.05 <= budget]  # heads differ
    return fits[-1] if fits else min(sizes)


def build(run: Any, *, cmap: str = DEFAULT_CMAP, budget: int = BUDGET, k: int | None = None,
          progress: Any = None) -> LongData:
    """The long representation of `run`: payload header plus one chunk per head and mask."""
    check_drawable(run)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 255):
        raise AttnmapError(f"k must be a whole number in 1..255 (not {k!r})")
    n = max(max(s.shape[2], s.shape[3]) for s in run.stacks.values())
    block = block_size(n)
    heads = sum(s.n_layers * s.n_heads for s in run.stacks.values())
    chunks: list[tuple[str, bytes]] = []
    stacks: dict[str, Any] = {}
    for name, st in run.stacks.items():
        masks, index = st.distinct_masks()
        for i, m in enumerate(masks):
            chunks.append((f"mask/{name}/{i}", encode_mask(m)))
        stacks[name] = {"masks": index}
        nk = st.shape[3]
        layers: dict[int, Any] = {}  # layer → its heads' pyramids folded (fold_pyramid)
        lock = threading.Lock()

        def fold(li: int, r: dict[str, np.ndarray], layers: dict[int, Any] = layers,
                 lock: threading.Lock = lock) -> None:
            with lock:
                layers[li] = fold_pyramid(layers.get(li), r)

        todo = [(li, h) for li in range(st.n_layers) for h in range(st.n_heads)]
        if k is None and todo:  # the first head measures what each k costs
            li, h = todo[0]
            r = reduce_head(_rows(run, name, li, h), _mask(st, li), block, K_CHOICES[-1])
            fold(li, r)
            sizes = {kc: len(pack(subset(r, kc), nk)) for kc in K_CHOICES}
            k = _choose_k(sizes, heads, budget)
            first = [(f"{name}/{li}/{h}", pack(subset(r, k), nk))]
            todo = todo[1:]
            if progress is not None:
                progress(1)
        else:
            first = []

        def one(job: tuple[int, int], name: str = name, st: Any = st, nk: int = nk,
                k: int = int(k or 1), fold: Any = fold) -> tuple[str, bytes]:
            li, h = job
            r = reduce_head(_rows(run, name, li, h), _mask(st, li), block, k)
            fold(li, r)
            if progress is not None:
                progress(1)
            return f"{name}/{li}/{h}", pack(r, nk)

        chunks += first + map_threads(one, todo)  # heads on one thread per core
        chunks += [(f"agg/{name}/{li}", pack_pyramid(layers[li], st.n_heads))
                   for li in sorted(layers)]
    head = header(run, [], cmap=cmap)
    head["long"] = {
        "encoding": ENCODING, "version": LONG_VERSION, "block": block, "k": k,
        "decades": DECADES, "steps": STEPS, "levels": LEVELS,
        "index_bytes": {name: index_bytes(st.shape[3]) for name, st in run.stacks.items()},
        "stacks": stacks, "approximate": APPROXIMATE,
    }
    hb = _json_bytes(head)
    payload = struct.pack("<4sII", MAGIC, PAYLOAD_VERSION, len(hb)) + hb
    return LongData(payload, chunks, block, int(k or 0), n)


def growth(sizes: dict[int, float]) -> float:
    """The exponent a of size ≈ c·nᵃ fitted (least squares in log-log) to {n: size}."""
    ns = sorted(sizes)
    if len(ns) < 2:
        return math.nan
    x = np.log([float(n) for n in ns])
    y = np.log([float(sizes[n]) for n in ns])
    return float(np.polyfit(x, y, 1)[0])
