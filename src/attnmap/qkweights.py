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


class QKLayers(Sequence[np.ndarray]):
    """A sequence of layers ``[head, query, key]`` computed on demand from queries and keys."""

    def __init__(self, q: list[np.ndarray], k: list[np.ndarray], scaling: list[float],
                 masks: Sequence[np.ndarray] | np.ndarray, *,
                 softcap: Sequence[float | None] | float | None = None,
                 sinks: list[np.ndarray] | None = None) -> None:
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
