"""Tiles of q/k runs computed with torch, for a GPU: registered into :mod:`attnmap.tiles`
(which never imports torch) by :func:`install` when a CUDA device is present.

Same definition as the numpy path: per chunk of query rows, the logits over every key (the
softmax needs the whole row), the layer's scaling, soft cap, sink logit and mask, the log
weights of the tile's keys, then a max or sum over each block. The GPU is fast enough that
normalisers are not cached: one chunk of rows is held at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tiles
from .qkweights import QKLayers

CHUNK_CELLS = 1 << 27  # logits per chunk of rows (512 MB of float32)


def install() -> bool:
    """Register the GPU backend if torch and a CUDA device are there; say whether it was."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    tiles.set_backend(lambda lay, li, heads, mask, spec: torch_tile(lay, li, heads, mask, spec,
                                                                    device="cuda"))
    return True


def torch_tile(lay: QKLayers, li: int, heads: list[int], mask: np.ndarray,
               spec: dict[str, Any], *, device: str = "cuda") -> np.ndarray:
    """One tile ``[rows, cols]`` (see :func:`attnmap.tiles.tile`) computed with torch."""
    import torch

    b, q0, k0 = spec["block"], spec["q0"], spec["k0"]
    rows, cols, reduce, agg = spec["rows"], spec["cols"], spec["reduce"], spec["agg"]
    nq, nk = mask.shape
    qb, kb = min(nq, q0 + rows * b), min(nk, k0 + cols * b)
    lo, hi, whole = tiles._extents(mask, tiles.CACHE)
    dev = torch.device(device)
    q = torch.as_tensor(lay.q[li]).to(dev, torch.float32)  # [head, query, dim]
    k = torch.as_tensor(lay.k[li]).to(dev, torch.float32)  # [kv_head, key, dim]
    rep = q.shape[0] // k.shape[0]
    cap, scale = lay.softcap[li], lay.scaling[li]
    sinks = None if lay.sinks is None else torch.as_tensor(lay.sinks[li]).to(dev, torch.float32)
    keys = torch.arange(nk, device=dev)
    step = max(b, (CHUNK_CELLS // nk) // b * b)
    out = torch.full((rows, cols), float("nan"), device=dev)
    for r0 in range(q0, qb, step):
        r1 = min(qb, r0 + step)
        nr, gr = r1 - r0, -(-(r1 - r0) // b)
        if whole[r0:r1].all():  # rows see one run of keys each: the mask from the extents
            a = torch.as_tensor(lo[r0:r1], device=dev)[:, None]
            z = torch.as_tensor(hi[r0:r1], device=dev)[:, None]
            hidden = (keys[None, :] < a) | (keys[None, :] >= z)  # [rows, key]
        else:
            hidden = torch.as_tensor(np.ascontiguousarray(mask[r0:r1])).to(dev)
        acc = None
        for h in heads:
            s = (q[h, r0:r1] @ k[h // rep].T) * scale  # [rows, key]
            if cap is not None:
                s = torch.tanh(s / cap) * cap
            s.masked_fill_(hidden, float("-inf"))
            if sinks is not None:
                s = torch.cat([s, sinks[h].expand(nr, 1)], dim=1)
            lse = torch.logsumexp(s, dim=1, keepdim=True)
            lw = s[:, k0:kb] - lse  # [rows, tile keys] log weights
            if spec["ignore_first"] and k0 == 0:
                lw[:, 0] = float("-inf")
            if agg == "max":
                acc = lw if acc is None else torch.maximum(acc, lw)
            elif agg == "mean":
                acc = lw.exp() if acc is None else acc + lw.exp()
            else:
                acc = lw
        assert acc is not None
        if agg == "mean":
            acc = torch.log(acc / len(heads))
        pad = torch.full((gr * b, cols * b), float("-inf"), device=dev)
        pad[:nr, : kb - k0] = acc
        blocks = pad.view(gr, b, cols, b)
        vals = blocks.amax(dim=(1, 3)).exp() if reduce == "max" else blocks.exp().sum(
            dim=(1, 3), dtype=torch.float64).float()
        seen = torch.zeros((gr * b, cols * b), dtype=torch.bool, device=dev)
        seen[:nr, : kb - k0] = ~hidden[:, k0:kb]
        if spec["ignore_first"] and k0 == 0:
            seen[:, 0] = False
        ok = seen.view(gr, b, cols, b).any(dim=3).any(dim=1)
        ro = (r0 - q0) // b
        out[ro : ro + gr] = torch.where(ok, vals, torch.full_like(vals, float("nan")))
    result: np.ndarray = out.cpu().numpy()
    return result
