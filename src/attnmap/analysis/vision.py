"""A census for the heads of a vision transformer (runs of an image; numpy only).

Per layer and head:

* ``distance_px``: mean attention distance in pixels of the original image, as in the ViT
  paper's figure: for each patch query, the distance from its patch's centre to each patch
  key's centre, weighted by the attention the query gives that key (renormalised over the
  patch keys), averaged over the patch queries. Small = a local head, large = a global one.
* ``cls_focus``: how concentrated CLS's attention over the patches is, 1 − H/log(n) with H
  the entropy of CLS's row renormalised over the n patches: 0 = spread evenly, 1 = on one
  patch. None for a model without CLS.
* ``sink_mass``: the share of the patch queries' attention that goes to tokens that are not
  patches (CLS, distillation, registers), averaged over the patch queries.
* ``register_mass``: the part of that share that goes to register tokens (None without
  registers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import AttnmapError
from ..patches import image_meta, patch_indices

VISION_SCORES = ("distance_px", "cls_focus", "sink_mass", "register_mass")


def vision_scores(run: Any, *, stack: str | None = None) -> list[dict[str, Any]]:
    """One entry per layer and head: ``{"layer", "head", "scores": {name: value | None}}``."""
    if image_meta(run) is None:
        raise AttnmapError("the vision census needs a run of an image (attnmap capture IMAGE)")
    tokens = run.tokens
    patches = patch_indices(tokens)  # [patch]
    if len(patches) < 2:
        raise AttnmapError("the run has fewer than two patch tokens; nothing to measure")
    boxes = np.asarray([tokens[int(i)].box for i in patches], dtype=np.float64)  # [patch, 4]
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    dist = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)  # [patch, patch]
    cls = next((i for i, t in enumerate(tokens) if t.kind == "cls"), None)
    registers = np.asarray([i for i, t in enumerate(tokens) if t.kind == "register"], int)
    is_patch = np.zeros(len(tokens), dtype=bool)
    is_patch[patches] = True
    out = []
    st = run.stack(stack)
    for li in range(st.n_layers):
        layer = run.layer(li, stack).astype(np.float64)  # [head, query, key]
        for h in range(layer.shape[0]):
            a = layer[h]
            rows = a[patches]  # [patch query, key]
            to_patches = rows[:, patches]  # [patch query, patch key]
            mass = to_patches.sum(axis=1, keepdims=True)
            w = np.divide(to_patches, mass, out=np.zeros_like(to_patches), where=mass > 0)
            scores: dict[str, float | None] = {
                "distance_px": float((w * dist).sum(axis=1).mean()),
                "sink_mass": float(rows[:, ~is_patch].sum(axis=1).mean()),
                "register_mass": (float(rows[:, registers].sum(axis=1).mean())
                                  if len(registers) else None),
                "cls_focus": None,
            }
            if cls is not None:
                p = a[cls, patches]
                p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
                ent = -float(np.sum(p * np.log(np.where(p > 0, p, 1.0))))
                scores["cls_focus"] = 1.0 - ent / float(np.log(len(p)))
            out.append({"layer": li, "head": h, "scores": scores})
    return out
