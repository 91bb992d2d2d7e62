"""Long inputs: keep each layer's queries and keys, compute a head's pattern when asked.

At 4,096 tokens a 12-layer × 12-head model has 2.4 billion attention weights (9.7 GB as
float32). Queries and keys for the same run take 0.15 GB, and one layer's pattern is computed
from them in well under a second. Capture installs an attention function that records
``query``/``key`` (after rotary embeddings, before grouped keys are repeated) and the layer's
mask, and returns no weights, so transformers never holds them all at once.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._errors import AttnmapError

IMPL_NAME = "attnmap_qk"
_STATE = threading.local()
_registered = False


class QKLayers(Sequence[np.ndarray]):
    """A sequence of layers ``[head, query, key]`` computed on demand from queries and keys."""

    def __init__(self, q: list[np.ndarray], k: list[np.ndarray], scaling: list[float],
                 masked: np.ndarray) -> None:
        self.q = q  # each [head, query, dim]
        self.k = k  # each [kv_head, key, dim] (grouped-query models share keys across heads)
        self.scaling = scaling
        self.masked = masked  # [query, key] bool

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
        """Softmax(q kᵀ · scaling) with masked keys excluded → ``[head, query, key]`` float32."""
        q, k = self.q[layer], self.k[layer]
        rep = q.shape[0] // k.shape[0]
        idx = range(q.shape[0]) if heads is None else heads
        out = np.empty((len(idx), q.shape[1], k.shape[1]), dtype=np.float32)
        for o, h in enumerate(idx):
            s = out[o]  # [query, key], filled in place
            np.matmul(q[h].astype(np.float32, copy=False),
                      k[h // rep].astype(np.float32, copy=False).T, out=s)
            s *= np.float32(self.scaling[layer])
            s[self.masked] = -np.inf
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
        return out


def _record(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
            scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> Any:
    import torch

    rec = getattr(_STATE, "record", None)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None or getattr(
            module, "sinks", None) is not None:
        raise AttnmapError(
            "this model's attention has soft-capping or sink logits, which the long-input "
            "mode does not reproduce; use a shorter text (store='weights')"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    rep = query.shape[1] // key.shape[1]
    k_full = key.repeat_interleave(rep, dim=1) if rep > 1 else key
    v_full = value.repeat_interleave(rep, dim=1) if rep > 1 else value
    out = torch.empty_like(query)  # [batch, head, query, dim]
    for h in range(query.shape[1]):  # one head at a time keeps the peak to one [q, k] matrix
        w = torch.matmul(query[:, h], k_full[:, h].transpose(-1, -2))  # [batch, query, key]
        w.mul_(scaling)
        if attention_mask is not None:
            w.add_(attention_mask[:, 0, :, : w.shape[-1]])
        # softmax in place: no second [query, key] matrix
        w.sub_(w.amax(dim=-1, keepdim=True)).exp_()
        w.div_(w.sum(dim=-1, keepdim=True))
        out[:, h] = torch.matmul(w.to(value.dtype), v_full[:, h])
    if rec is not None:
        if attention_mask is not None:
            seen = attention_mask[0, 0, :, : key.shape[2]] < -1e30  # [query, key] bool
            if not torch.equal(seen, _STATE.expected):
                _STATE.mask_mismatch = True
        rec.append((query[0].detach().float().cpu().numpy(),
                    key[0].detach().float().cpu().numpy(), float(scaling)))
    return out.transpose(1, 2).contiguous(), None


def _release_freed_memory(setup: bool) -> None:
    """glibc keeps freed blocks of a few MB in its heaps, so a long forward leaves the process
    holding gigabytes it no longer uses. Serving big blocks from mmap (returned to the system
    on free) and trimming afterwards keeps the peak near what is really live."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        if setup:
            libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: blocks of 1 MiB and up via mmap
        else:
            libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to tune
        pass


def register() -> None:
    """Make ``attn_implementation="attnmap_qk"`` known to transformers (once)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPL_NAME, _record)
    AttentionMaskInterface.register(IMPL_NAME, eager_mask)
    _registered = True


def forward_qk(model: Any, input_ids: Any, causal: bool, *, logits: bool = False
               ) -> tuple[QKLayers, Any]:
    """Run `model` once, recording queries and keys instead of attention weights; also
    return the logits when asked (else None)."""
    import torch

    register()
    n = int(input_ids.shape[1])
    expected = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    before = model.config._attn_implementation
    _STATE.record = []
    _STATE.expected = torch.from_numpy(expected)
    _STATE.mask_mismatch = False
    # The bare transformer (no LM head): logits over a 50k vocabulary at 4k tokens would
    # cost more memory than all the queries and keys together.
    body = model if logits else getattr(model, "base_model", model)
    _release_freed_memory(setup=True)
    try:
        model.set_attn_implementation(IMPL_NAME)
        with torch.no_grad():
            out = body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        rec = _STATE.record
        mismatch = _STATE.mask_mismatch
    finally:
        _STATE.record = _STATE.expected = None
        model.set_attn_implementation(before)
        _release_freed_memory(setup=False)
    if not rec:
        raise AttnmapError(
            "this model does not route attention through transformers' attention interface; "
            "the long-input mode cannot capture it (use a shorter text)"
        )
    if mismatch:
        raise AttnmapError(
            "this model masks attention in a way the long-input mode does not reproduce "
            "(sliding windows?); use a shorter text"
        )
    layers = QKLayers([r[0] for r in rec], [r[1] for r in rec], [r[2] for r in rec], expected)
    return layers, (out.logits if logits else None)
