"""Beyond raw attention, the numpy part: rollout, and the run that carries any method's result.

Rollout is numpy on the run. Value-norm weighting and attention × gradient need what a run does
not store (value vectors, gradients), so they live in :mod:`attnmap.attribution`, in the
capture layer, and hand their arrays to :func:`method_run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._errors import AttnmapError
from ..run import STACK_SIDES, AttentionRun, AttentionStack

METHODS = ("raw", "rollout", "value-norm", "grad")
_ALIASES = {
    "raw": "raw",
    "rollout": "rollout",
    "value-norm": "value-norm",
    "value_norm": "value-norm",
    "norm": "value-norm",
    "grad": "grad",
    "attention-x-gradient": "grad",
    "attention_x_gradient": "grad",
}


def _renorm(m: np.ndarray) -> np.ndarray:
    s = m.sum(axis=-1, keepdims=True)
    out: np.ndarray = np.divide(m, s, out=np.zeros_like(m), where=s > 0)
    return out


def rollout(run: AttentionRun, *, stack: str | None = None) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) after each layer: ``[layer, query, key]``.

    Heads averaged, the residual added as ``0.5·A + 0.5·I``, rows renormalised, and the layers
    multiplied: ``J_0 = Â_0``, ``J_l = Â_l · J_{l−1}``. Row ``i`` of the last layer says how
    much of position ``i``'s output traces back to each input token.
    """
    st = run.stack(stack)
    q_side, k_side = STACK_SIDES[st.name]
    if q_side != k_side:
        raise AttnmapError(
            f"rollout multiplies self-attention through the layers; {st.name!r} is "
            "cross-attention (pick the encoder or decoder stack)"
        )
    n = st.mask(0).shape[0]
    eye = np.eye(n)
    out = np.empty((st.n_layers, n, n))  # [layer, query, key]
    joint = eye
    for li in range(st.n_layers):
        a = run.layer(li, st.name).astype(np.float64)  # [head, query, key]
        a = np.where(st.mask(li), 0.0, a).mean(axis=0)  # [query, key]
        hat = _renorm(0.5 * a + 0.5 * eye)
        joint = hat @ joint
        out[li] = joint
    return out


def method_key(method: Any) -> str:
    """The canonical name of `method` ('raw', 'rollout', 'value-norm', 'grad'), or an error."""
    key = _ALIASES.get(str(method).strip().lower()) if isinstance(method, str) else None
    if key is None:
        raise AttnmapError(f"method must be one of {', '.join(METHODS)} (not {method!r})")
    return key


def method_run(run: AttentionRun, key: str, stacks: dict[str, AttentionStack], note: str, *,
               words: bool = False) -> AttentionRun:
    """A NEW run holding a method's result `stacks`; ``run.model["method"]`` names it, so
    plots, pages and the viewer show it unchanged. Words are merged after the method."""
    model = dict(run.model)
    if key != "raw":
        model["method"] = key
        model["method_note"] = note
        if key in ("rollout", "grad"):
            model["heads"] = 1
    new = dataclasses.replace(run, stacks=stacks, model=model, extra=dict(run.extra))
    if not words:
        return new
    from .words import merge_words

    return merge_words(new)


def rollout_stacks(run: AttentionRun) -> tuple[dict[str, AttentionStack], str]:
    """Rollout of every self-attention stack as one-head stacks, and the note describing it."""
    stacks: dict[str, AttentionStack] = {}
    for name, st in run.stacks.items():
        q_side, k_side = STACK_SIDES[name]
        if q_side != k_side:
            continue  # rollout is defined for self-attention only
        r = rollout(run, stack=name).astype(np.float32)  # [layer, query, key]
        reach = reach_masks(st)
        stacks[name] = AttentionStack(name, [x[None] for x in r], reach[0], reach)
    note = ("attention rollout (Abnar & Zuidema 2020): heads averaged, residual added, "
            "multiplied through the layers; layer l shows the result after layer l"
            + ("; cross-attention left out" if len(stacks) < len(run.stacks) else ""))
    return stacks, note


def transform(run: AttentionRun, *, words: bool = False, method: str = "raw") -> AttentionRun:
    """A NEW run holding what a numpy `method` (raw or rollout) computes, optionally merged
    into words. Methods that run the model again: :func:`attnmap.transform`."""
    key = method_key(method)
    if key == "raw":
        return method_run(run, key, dict(run.stacks), "", words=words)
    if key == "rollout":
        stacks, note = rollout_stacks(run)
        return method_run(run, key, stacks, note, words=words)
    raise AttnmapError(f"method {key!r} runs the model again; use attnmap.transform")


def reach_masks(st: AttentionStack) -> list[np.ndarray]:
    """Per layer, the cells no path through the layers so far can reach (True = masked).

    Methods that multiply layers (rollout, attention × gradient) carry information past one
    layer's window: after two layers of a 4-token window a query reaches 8 tokens back. A cell
    is masked only where every path is blocked, as in a causal model's future."""
    n = st.mask(0).shape[0]
    eye = np.eye(n, dtype=bool)
    reach = eye
    out = []
    for li in range(st.n_layers):
        step = (~np.asarray(st.mask(li), dtype=bool)) | eye  # [query, key]
        reach = (step.astype(np.float32) @ reach.astype(np.float32)) > 0
        out.append(~reach)
    return out
