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
(``encode_mask``). Over heads, the max of block maxima and the mean of block sums are exact (up
to the codes); a mean or max cell that some head did not keep is shown as an upper bound.

Each piece is deflated alone, so the viewer decodes only the head it shows. ``k`` comes from a
byte budget (``BUDGET``), measured on the first head. Chunk layout (before deflate), all
little-endian::

    f32 hi_max, f32 hi_sum, f32 rowmax[nq] |
    u8 max[Pq, Pk], u8 sum[Pq, Pk], u8 rest_max[Pq], u8 rest_sum[Pq], u8 bound[nq], u8 count[nq] |
    u8 key delta planes[index_bytes][entries] (low byte first) | u8 codes[entries]

Mask chunk (before deflate): ``u32 count[nq]`` (intervals per row), then ``u32 [start, end)``
pairs, row by row.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import AttnmapError
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
    return zlib.compress(data, LEVEL)


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
def _pad(a: np.ndarray, rows: int, cols: int, fill: Any) -> np.ndarray:
    if a.shape == (rows, cols):
        return a
    out = np.full((rows, cols), fill, a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def pyramid(w: np.ndarray, masked: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """Block max and sum of one head ``w`` [query, key] (masked cells left out; NaN where a
    block is all masked), and the first block column without key 0 (``rest_*``)."""
    nq, nk = w.shape
    pq, pk = -(-nq // block), -(-nk // block)
    m = _pad(masked, pq * block, pk * block, True)
    ww = _pad(w.astype(np.float32, copy=False), pq * block, pk * block, 0.0)
    vis = np.where(m, np.float32(-1), ww).reshape(pq, block, pk, block)  # [bq, q, bk, k]
    bmax = vis.max(axis=(1, 3))
    bsum = np.where(m, np.float32(0), ww).reshape(pq, block, pk, block).sum(axis=(1, 3),
                                                                            dtype=np.float64)
    allm = m.reshape(pq, block, pk, block).all(axis=(1, 3))
    first = vis[:, :, 0, 1:]  # [bq, q, keys 1..block-1] of the first block column
    rmax = first.max(axis=(1, 2)) if block > 1 else np.full(pq, -1, np.float32)
    rsum = (np.maximum(first, 0).sum(axis=(1, 2), dtype=np.float64) if block > 1
            else np.zeros(pq))
    rall = m.reshape(pq, block, pk, block)[:, :, 0, 1:].all(axis=(1, 2)) if block > 1 \
        else np.ones(pq, bool)
    nan = np.float32(np.nan)
    return {
        "max": np.where(allm, nan, bmax).astype(np.float32),
        "sum": np.where(allm, nan, bsum).astype(np.float32),
        "rest_max": np.where(rall, nan, rmax).astype(np.float32),
        "rest_sum": np.where(rall, nan, rsum).astype(np.float32),
    }


def top_k(w: np.ndarray, masked: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per row the `k` largest visible weights: ``count`` [query], ``keys`` (ascending per
    row, concatenated), ``values`` (float32, same order), ``rowmax``, ``bound`` (the largest
    visible weight not kept, 0 when none)."""
    nq, nk = w.shape
    s = np.where(masked, np.float32(-1), w.astype(np.float32, copy=False))  # [query, key]
    visible = (~masked).sum(axis=1)
    kk = min(k, nk)
    if kk < nk:
        part = np.argpartition(-s, kk, axis=1)  # [:, :kk] the kk largest, [:, kk] the next
        top = part[:, :kk]
        nxt = np.take_along_axis(s, part[:, kk : kk + 1], axis=1)[:, 0]
    else:
        top = np.broadcast_to(np.arange(nk), (nq, nk))
        nxt = np.full(nq, -1, np.float32)
    top = np.sort(top, axis=1)
    vals = np.take_along_axis(s, top, axis=1)  # [query, kk]
    keep = vals >= 0  # masked keys (rows that see fewer than k) drop out
    count = keep.sum(axis=1)
    rowmax = np.maximum(s.max(axis=1), 0).astype(np.float32)
    bound = np.where(visible > count, np.maximum(nxt, 0), 0).astype(np.float32)
    return {"count": count.astype(np.int64), "keys": top[keep].astype(np.int64),
            "values": vals[keep].astype(np.float32), "rowmax": rowmax, "bound": bound}


def encode_head(w: np.ndarray, masked: np.ndarray, block: int, k: int) -> bytes:
    """One head [query, key] as a deflated chunk (layout: module docstring)."""
    nq, nk = w.shape
    w = np.nan_to_num(np.asarray(w, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    p = pyramid(w, masked, block)
    hi_max = float(np.nanmax(p["max"])) if np.isfinite(p["max"]).any() else 0.0
    hi_sum = float(np.nanmax(p["sum"])) if np.isfinite(p["sum"]).any() else 0.0
    t = top_k(w, masked, k)
    rowmax = t["rowmax"]
    safe = np.where(rowmax > 0, rowmax, 1).astype(np.float32)
    rows = np.repeat(np.arange(nq), t["count"])
    codes = np.rint(t["values"] / safe[rows] * LEVELS).astype(np.uint8)
    bound = np.minimum(np.ceil(t["bound"] / safe * LEVELS - 1e-6), LEVELS).astype(np.uint8)
    keys = t["keys"]
    starts = np.concatenate([[0], np.cumsum(t["count"])[:-1]]).astype(np.int64)
    delta = keys.copy()
    delta[1:] -= keys[:-1]
    delta[starts[t["count"] > 0]] = keys[starts[t["count"] > 0]]  # each row starts absolute
    nbytes = index_bytes(nk)
    planes = [((delta >> (8 * i)) & 0xFF).astype(np.uint8).tobytes() for i in range(nbytes)]
    body = b"".join([
        np.array([hi_max, hi_sum], "<f4").tobytes(), rowmax.astype("<f4").tobytes(),
        log_codes(p["max"], hi_max, np.isnan(p["max"])).tobytes(),
        log_codes(p["sum"], hi_sum, np.isnan(p["sum"])).tobytes(),
        log_codes(p["rest_max"], hi_max, np.isnan(p["rest_max"])).tobytes(),
        log_codes(p["rest_sum"], hi_sum, np.isnan(p["rest_sum"])).tobytes(),
        bound.tobytes(), t["count"].astype(np.uint8).tobytes(), *planes, codes.tobytes(),
    ])
    return _deflate(body)


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


def _head(run: Any, stack: str, layer: int, head: int) -> np.ndarray:
    """One head's weights [query, key] float32, computed alone where the run keeps q/k."""
    st = run.stack(stack)
    layers = st.layers
    if hasattr(layers, "compute"):
        return layers.compute(layer, heads=[head])[0]
    return np.asarray(layers[layer][head], dtype=np.float32)


def _choose_k(run: Any, stack: str, block: int, budget: int) -> int:
    """The largest k in K_CHOICES whose pages fit `budget`, from the first head's sizes."""
    st = run.stack(stack)
    w = _head(run, stack, 0, 0)
    masked = np.asarray(st.mask(0), dtype=bool)
    heads = sum(s.n_layers * s.n_heads for s in run.stacks.values())
    best = K_CHOICES[0]
    for k in K_CHOICES:
        if k > w.shape[1] and k != K_CHOICES[0]:
            break
        size = len(encode_head(w, masked, block, k))
        if size * heads * 1.05 > budget:  # 5 %: heads differ
            break
        best = k
    return best


def build(run: Any, *, cmap: str = DEFAULT_CMAP, budget: int = BUDGET, k: int | None = None,
          progress: Any = None) -> LongData:
    """The long representation of `run`: payload header plus one chunk per head and mask."""
    check_drawable(run)
    if k is not None and not (isinstance(k, int) and 1 <= k <= 255):
        raise AttnmapError(f"k must be a whole number in 1..255 (not {k!r})")
    n = max(max(s.shape[2], s.shape[3]) for s in run.stacks.values())
    block = block_size(n)
    first = next(iter(run.stacks))
    if k is None:
        k = _choose_k(run, first, block, budget)
    chunks: list[tuple[str, bytes]] = []
    stacks: dict[str, Any] = {}
    for name, st in run.stacks.items():
        masks, index = st.distinct_masks()
        for i, m in enumerate(masks):
            chunks.append((f"mask/{name}/{i}", encode_mask(m)))
        stacks[name] = {"masks": index}
        for li in range(st.n_layers):
            masked = np.asarray(st.mask(li), dtype=bool)
            for h in range(st.n_heads):
                chunks.append((f"{name}/{li}/{h}", encode_head(_head(run, name, li, h), masked,
                                                               block, k)))
                if progress is not None:
                    progress(1)
    head = header(run, [], cmap=cmap)
    head["long"] = {
        "encoding": ENCODING, "version": LONG_VERSION, "block": block, "k": k,
        "decades": DECADES, "steps": STEPS, "levels": LEVELS,
        "index_bytes": {name: index_bytes(st.shape[3]) for name, st in run.stacks.items()},
        "stacks": stacks, "approximate": APPROXIMATE,
    }
    hb = _json_bytes(head)
    payload = struct.pack("<4sII", MAGIC, PAYLOAD_VERSION, len(hb)) + hb
    return LongData(payload, chunks, block, k, n)


def growth(sizes: dict[int, float]) -> float:
    """The exponent a of size ≈ c·nᵃ fitted (least squares in log-log) to {n: size}."""
    ns = sorted(sizes)
    if len(ns) < 2:
        return math.nan
    x = np.log([float(n) for n in ns])
    y = np.log([float(sizes[n]) for n in ns])
    return float(np.polyfit(x, y, 1)[0])
