"""Attention weights computed from queries and keys when a layer is read (numpy only).

A run captured with ``store="qk"`` keeps each layer's queries and keys instead of its weights:
at 4,096 tokens a 12 × 12 model has 2.4 billion weights (9.7 GB as float32), its queries and
keys 0.15 GB. :class:`QKLayers` recomputes ``softmax(q·kᵀ·scaling)`` (with the layer's mask,
soft-capping and sink logits) for one layer at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._parallel import map_threads

# A masked logit: finite, so that 0 × it is 0 where log-probabilities are summed; exp of it
# (after the row's max is taken away) is exactly 0 in float32.
_HIDDEN = np.float32(-1e30)


class Scratch:
    """Named float32 buffers that grow to the largest block asked for and are reused."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        flat = self._flat.get(name)
        if flat is None or flat.size < size:
            flat = self._flat[name] = np.empty(size, dtype=np.float32)
        return flat[:size].reshape(shape)


class QKLayers(Sequence[np.ndarray]):
    """A sequence of layers ``[head, query, key]`` computed on demand from queries and keys."""

    def __init__(self, q: list[np.ndarray], k: list[np.ndarray], scaling: list[float],
                 masks: Sequence[np.ndarray] | np.ndarray, *,
                 softcap: Sequence[float | None] | float | None = None,
                 sinks: list[np.ndarray] | None = None,
                 logsumexp: list[np.ndarray] | None = None) -> None:
        self.q = q  # each [head, query, dim]
        self.k = k  # each [kv_head, key, dim] (grouped-query models share keys across heads)
        self.scaling = [float(s) for s in scaling]
        if isinstance(masks, np.ndarray) and masks.ndim == 2:
            masks = [masks] * len(q)
        self.masks: list[np.ndarray] = list(masks)  # each [query, key] bool, per layer
        if softcap is None or isinstance(softcap, (int, float)):
            softcap = [softcap] * len(q)
        self.softcap = [None if c is None else float(c) for c in softcap]
        self.sinks = sinks  # each [head] float32: a sink logit per head (gpt-oss), or None
        # each [head, query] float32: log Σ exp of a row's scaled logits over the keys it may
        # see, as the capture's fused attention found it (None where it was not given); a
        # reader may take it as the row's softmax normaliser instead of finding it again
        self.logsumexp = logsumexp
        self._spans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def spans(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`row_spans` of a layer's mask, found once per distinct mask (a run file that
        stores masks as spans hands them over when it is read)."""
        m = self.masks[layer]
        got = self._spans.get(id(m))  # the masks live as long as self: their ids stay theirs
        if got is None:
            got = self._spans[id(m)] = row_spans(m)
        return got

    def give_spans(self, mask: np.ndarray, first: np.ndarray, end: np.ndarray) -> None:
        """Spans already known for one of the layers' masks, every row one run of keys."""
        self._spans[id(mask)] = (first, end, np.ones(len(first), bool))

    @property
    def masked(self) -> np.ndarray:
        """The first layer's mask (older name; ask the stack for a layer's mask)."""
        return self.masks[0]

    def __len__(self) -> int:
        return len(self.q)

    @property
    def shape(self) -> tuple[int, int, int]:
        h, nq, _ = self.q[0].shape
        return (int(h), int(nq), int(self.k[0].shape[1]))

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.compute(int(i))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.compute(i)

    def rows(self, layer: int, r0: int, r1: int, k0: int = 0, k1: int | None = None, *,
             heads: Sequence[int] | None = None, entropy: bool = False,
             scratch: Scratch | None = None) -> Any:
        """Weights of query rows ``r0:r1`` over keys ``k0:k1`` for every head (or `heads`) →
        ``[head, row, key]`` float32, normalised over the keys the mask allows; with
        `entropy`, also each row's entropy in nats ``[head, row]`` (from the logits, with no
        logarithm per cell): ``(weights, entropy)``.

        The caller promises that the mask hides every key outside ``k0:k1`` from these rows
        (a causal row's future, the part of a sliding window left behind), so a long run is
        read a block of rows at a time without its whole matrix: memory is ``head × rows ×
        (k1 - k0)``. Equal to the same cells of :meth:`compute` up to float rounding.
        A caller reading many blocks passes one `scratch`: the blocks then reuse its memory
        (fresh memory for every block costs page faults), and each result is valid until the
        next call with it.
        """
        q, k = self.q[layer], self.k[layer]
        h, _, d = q.shape
        kvh = k.shape[0]
        rep = h // kvh
        k1 = k.shape[1] if k1 is None else k1
        nr, nk = r1 - r0, k1 - k0
        scale = np.float32(self.scaling[layer])
        scratch = scratch or Scratch()
        picked = list(range(h)) if heads is None else [int(x) for x in heads]
        s = scratch.take("logits", (len(picked), nr, nk))  # [head, row, key]
        if heads is None:  # one product per key head and the query heads sharing it
            for g in range(kvh):
                qg = q[g * rep:(g + 1) * rep, r0:r1].astype(np.float32) * scale
                np.matmul(qg.reshape(rep * nr, d), k[g, k0:k1].astype(np.float32, copy=False).T,
                          out=s[g * rep:(g + 1) * rep].reshape(rep * nr, nk))
        else:
            for o, hi in enumerate(picked):
                np.matmul(q[hi, r0:r1].astype(np.float32) * scale,
                          k[hi // rep, k0:k1].astype(np.float32, copy=False).T, out=s[o])
        cap = self.softcap[layer]
        if cap is not None:
            s /= np.float32(cap)
            np.tanh(s, out=s)
            s *= np.float32(cap)
        blocked = self.masks[layer][r0:r1, k0:k1]
        cols = np.nonzero(blocked.any(axis=0))[0]
        if len(cols):  # only the columns some row may not see need the mask
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            s[:, :, c0:c1] += np.where(blocked[:, c0:c1], _HIDDEN, np.float32(0.0))
        lse = self._lse_rows(layer, picked, r0, r1)
        if lse is not None:  # the capture's normaliser: log p = s − lse, no max or sum pass
            s -= lse
            p = np.exp(s, out=scratch.take("weights", s.shape) if entropy else s)
            if not entropy:
                return p
            return p, np.maximum(-np.einsum("hqk,hqk->hq", p, s, dtype=np.float64), 0.0)
        top = s.max(axis=-1, keepdims=True)  # [head, row, 1]
        sink = None
        if self.sinks is not None:
            sink = np.asarray(self.sinks[layer], dtype=np.float32)[picked][:, None, None]
            top = np.maximum(top, sink)
        top[top <= _HIDDEN / 2] = 0.0  # a row with every key masked stays all 0
        s -= top  # log p = s − log(total)
        p = np.exp(s, out=scratch.take("weights", s.shape) if entropy else s)
        total = p.sum(axis=-1, keepdims=True)
        if sink is not None:
            total += np.exp(sink - top)
        total[total == 0] = 1.0
        p /= total
        if not entropy:
            return p
        # H = −Σ p·log p = log(total)·Σp − Σ p·s (a masked cell: p = 0 and s finite)
        mass = p.sum(axis=-1, dtype=np.float64)
        ent = np.log(total[..., 0]).astype(np.float64) * mass - np.einsum(
            "hqk,hqk->hq", p, s, dtype=np.float64)
        return p, np.maximum(ent, 0.0)

    def _lse_rows(self, layer: int, heads: list[int], r0: int, r1: int) -> np.ndarray | None:
        """The capture's log-sum-exp of rows r0:r1 → ``[head, row, 1]`` float32, or None;
        rows that see no key get 0 (their cells stay 0)."""
        if self.logsumexp is None or self.sinks is not None:
            return None
        x = np.asarray(self.logsumexp[layer], dtype=np.float32)[heads, r0:r1, None]
        x[~(x > _HIDDEN / 2)] = 0.0  # −inf, NaN, or a float mask's minimum: nothing seen
        return x

    def compute(self, layer: int, heads: Sequence[int] | None = None) -> np.ndarray:
        """softmax(q kᵀ · scaling) over the keys the layer's mask allows, with the layer's
        soft-capping and sink logit → ``[head, query, key]`` float32."""
        q, k = self.q[layer], self.k[layer]
        rep = q.shape[0] // k.shape[0]
        masked = self.masks[layer]
        cap = self.softcap[layer]
        idx = range(q.shape[0]) if heads is None else heads
        out = np.empty((len(idx), q.shape[1], k.shape[1]), dtype=np.float32)
        for o, h in enumerate(idx):
            s = out[o]  # [query, key], filled in place
            np.matmul(q[h].astype(np.float32, copy=False),
                      k[h // rep].astype(np.float32, copy=False).T, out=s)
            s *= np.float32(self.scaling[layer])
            if cap is not None:
                s /= np.float32(cap)
                np.tanh(s, out=s)
                s *= np.float32(cap)
            s[masked] = -np.inf
            top = s.max(axis=-1, keepdims=True)  # [query, 1]
            sink = None
            if self.sinks is not None:
                sink = np.float32(self.sinks[layer][h])
                top = np.maximum(top, sink)
            top[~np.isfinite(top)] = 0.0  # a row with every key masked stays all 0
            s -= top
            np.exp(s, out=s)
            total = s.sum(axis=-1, keepdims=True)
            if sink is not None:
                total += np.exp(sink - top)
            total[total == 0] = 1.0
            s /= total
        return out


_SPAN_CELLS = 1 << 22  # mask cells read at once per thread
# per byte of packed hidden flags (most significant bit first): how many keys it hides, and
# one past the last key it lets through (0 when it hides all 8)
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)
_LAST_SEEN = np.array([max((p + 1 for p in range(8) if not b >> (7 - p) & 1), default=0)
                       for b in range(256)], dtype=np.int64)


def row_spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row of a ``[query, key]`` mask (True = hidden): the first and one past the
    last key it may see, and whether every key in between is visible (a causal or
    sliding-window row is; a padded one may not be). A row that sees nothing: (0, 0, True).

    Read from the mask packed eight keys to a byte: the first visible key by a forward
    search (which stops early), the last one and the count of hidden keys from the packed
    bytes, so a 32,768-token mask (1 GiB) is read once, on one thread per core."""
    nq, nk = mask.shape
    lo = np.zeros(nq, dtype=np.int64)
    hi = np.zeros(nq, dtype=np.int64)
    whole = np.ones(nq, dtype=bool)
    step = max(1, _SPAN_CELLS // max(nk, 1))
    pad = -nk % 8  # bits past the last key in a row's last byte: marked hidden

    def part(r0: int) -> None:
        m = np.asarray(mask[r0:r0 + step], dtype=bool)  # [rows, key] True = hidden
        rows = np.arange(m.shape[0])
        first = m.argmin(axis=1)
        some = ~m[rows, first]
        packed = np.packbits(m, axis=1)  # [rows, ⌈keys/8⌉]
        if pad:
            packed[:, -1] |= np.uint8((1 << pad) - 1)
        if hasattr(np, "bitwise_count"):
            hidden = np.bitwise_count(packed).sum(axis=1, dtype=np.int64) - pad
        else:  # numpy < 2
            hidden = _POPCOUNT[packed].sum(axis=1) - pad
        open_ = packed != 0xFF  # bytes with a visible key
        j = packed.shape[1] - 1 - open_[:, ::-1].argmax(axis=1)
        last = j * 8 + _LAST_SEEN[packed[rows, j]]
        lo[r0:r0 + step] = np.where(some, first, 0)
        hi[r0:r0 + step] = np.where(some, last, 0)
        whole[r0:r0 + step] = ~some | (nk - hidden == last - first)

    if nk:  # with no keys every row sees nothing: (0, 0, whole)
        map_threads(part, range(0, nq, step))
    return lo, hi, whole
