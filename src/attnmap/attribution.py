"""Methods beyond raw attention that run the model again: value-norm weighting and
attention × gradient, and :func:`transform`, the one entry point for every method.

A run does not store value vectors or gradients, so these run the model on the run's own token
ids and first check that the model still gives the run's attention. This module is part of the
capture layer (it imports torch); rollout is numpy and lives in :mod:`attnmap.analysis.methods`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import AttnmapError
from .analysis.methods import _renorm, method_key, method_run, reach_masks
from .analysis.methods import transform as numpy_transform
from .run import AttentionRun, AttentionStack


def _loaded(run: AttentionRun, model: Any) -> Any:
    from .capturing import get_model

    if "self" not in run.stacks:
        raise AttnmapError(
            "this method is not supported for encoder-decoder runs yet; use a decoder-only "
            "(GPT-2-like) or encoder (BERT-like) model"
        )
    if run.model.get("words") or run.model.get("method"):
        raise AttnmapError(
            "this method needs a run of raw token attention; apply it before merging words "
            "or other methods"
        )
    ident = model if model is not None else run.model.get("id")
    if ident is None:
        raise AttnmapError("the run does not name its model; pass model=…")
    return get_model(ident)


def _family(model: Any) -> tuple[str, list[Any]]:
    """('bert' | 'gpt2', per-layer attention modules), or a clear error."""
    base = getattr(model, "base_model", model)
    enc = getattr(getattr(base, "encoder", None), "layer", None)
    if enc is not None and all(
        hasattr(layer, "attention") and hasattr(layer.attention, "self")
        and hasattr(layer.attention.self, "value") and hasattr(layer.attention, "output")
        for layer in enc
    ):
        return "bert", [layer.attention for layer in enc]
    blocks = getattr(base, "h", None)
    if blocks is not None and all(
        hasattr(b, "attn") and hasattr(b.attn, "c_attn") for b in blocks
    ):
        return "gpt2", [b.attn for b in blocks]
    raise AttnmapError(
        f"this method supports BERT-like and GPT-2-like models, not {type(model).__name__}; "
        "use --method rollout, which works for every model"
    )


def _inputs(run: AttentionRun) -> Any:
    import torch

    ids = torch.tensor([[t.id for t in run.tokens]])
    return ids, torch.ones_like(ids)


def _check_same(run: AttentionRun, attentions: Any) -> None:
    got = [a[0].detach().float().cpu().numpy() for a in attentions]
    st = run.stack("self")
    if len(got) != st.n_layers or any(
        g.shape != np.shape(want) or not np.allclose(g, want, atol=2e-3)
        for g, want in zip(got, st.layers, strict=False)
    ):
        raise AttnmapError(
            f"model {run.model.get('id')!r} no longer gives this run's attention (was it "
            "changed since the capture?); capture the text again"
        )


def value_norm(
    run: AttentionRun, *, model: Any = None, normalize: bool = True
) -> np.ndarray:
    """Norm-based attention (Kobayashi et al. 2020): ``‖α_ij · f_h(x_j)‖``, ``[layer, head, q, k]``.

    ``f_h(x) = (x W_V + b_V) W_O`` restricted to head ``h``. With ``normalize`` (the default,
    for display) each row is scaled to sum to 1; otherwise the raw norms come back.
    """
    import torch

    loaded = _loaded(run, model)
    kind, attn_mods = _family(loaded.model)
    values: dict[int, Any] = {}
    hooks = []
    for li, mod in enumerate(attn_mods):
        lin = mod.self.value if kind == "bert" else mod.c_attn

        def grab(_m: Any, _i: Any, out: Any, li: int = li) -> None:
            values[li] = out.detach()

        hooks.append(lin.register_forward_hook(grab))
    ids, mask = _inputs(run)
    try:
        with torch.no_grad():
            out = loaded.model(input_ids=ids, attention_mask=mask, output_attentions=True,
                               return_dict=True)
    finally:
        for h in hooks:
            h.remove()
    _check_same(run, out.attentions)
    layers = []
    for li, mod in enumerate(attn_mods):
        a = out.attentions[li][0].double()  # [head, query, key]
        n_heads = a.shape[0]
        if kind == "bert":
            v = values[li][0]  # [key, hidden]
            w_o = mod.output.dense.weight.detach().T  # [in, out]
        else:
            hidden = values[li].shape[-1] // 3
            v = values[li][0, :, 2 * hidden:]  # [key, hidden]; c_attn gives q | k | v
            w_o = mod.c_proj.weight.detach()  # Conv1D stores [in, out]
        d = v.shape[-1] // n_heads
        v = v.double().reshape(v.shape[0], n_heads, d)  # [key, head, head_dim]
        w_o = w_o.double().reshape(n_heads, d, w_o.shape[-1])  # [head, head_dim, out]
        f = torch.einsum("khd,hde->hke", v, w_o)  # [head, key, out]
        norms = f.norm(dim=-1)  # [head, key]
        layers.append((a * norms[:, None, :]).numpy())
    res = np.stack(layers)  # [layer, head, query, key]
    return _renorm(res) if normalize else res


def attention_x_gradient(
    run: AttentionRun,
    *,
    target: int | None = None,
    model: Any = None,
    return_target: bool = False,
) -> Any:
    """Attention × gradient relevance (Chefer et al. 2021) after each layer: ``[layer, q, k]``.

    ``Ā_l = mean_h (∇_A y ⊙ A_l)⁺``, ``R ← I``, ``R ← R + Ā_l R``; rows normalised to sum to
    1 for display. ``y``: causal LMs, the logit of the predicted next token at the last
    position (or at `target`); masked LMs, the top logit at the mask token; plain encoders,
    the norm of the mean-pooled output. With ``return_target`` the result is
    ``(array, description of y)``.
    """
    arr, desc = _grad(run, target=target, model=model)
    return (arr, desc) if return_target else arr


def _grad(run: AttentionRun, *, target: int | None, model: Any) -> tuple[np.ndarray, str]:
    import torch

    loaded = _loaded(run, model)
    m, tok = loaded.model, loaded.tokenizer
    ids, mask = _inputs(run)
    n = ids.shape[1]
    if target is not None:
        target = _position(target, n)
    with torch.enable_grad():
        out = m(input_ids=ids, attention_mask=mask, output_attentions=True, return_dict=True)
        atts = list(out.attentions)
        if any(a is None or not a.requires_grad for a in atts):
            raise AttnmapError("the model's attention weights carry no gradient; "
                               "it must be loaded with eager attention")
        for a in atts:
            a.retain_grad()
        logits = getattr(out, "logits", None)
        if run.causal and logits is not None:
            pos = n - 1 if target is None else target
            best = int(logits[0, pos].argmax())
            y = logits[0, pos, best]
            desc = (f"logit of the predicted next token {_tok(tok, best)!r} after position "
                    f"{pos}")
        elif logits is not None and type(m).__name__.endswith("ForMaskedLM"):
            pos = target
            if pos is None:
                mask_id = getattr(tok, "mask_token_id", None)
                where = [i for i, t in enumerate(run.tokens) if t.id == mask_id]
                if mask_id is None or not where:
                    raise AttnmapError(
                        "no mask token in the text; put one in (e.g. [MASK]) or give "
                        "target=POSITION"
                    )
                pos = where[0]
            best = int(logits[0, pos].argmax())
            y = logits[0, pos, best]
            desc = f"logit of the top prediction {_tok(tok, best)!r} at masked position {pos}"
        else:
            hidden = out.last_hidden_state[0]  # [token, hidden]
            if target is None:
                y = hidden.mean(dim=0).norm()
                desc = ("norm of the mean-pooled output (the model has no prediction head, "
                        "so this stands in for its sentence embedding)")
            else:
                y = hidden[target].norm()
                desc = f"norm of the output at position {target} (the model has no head)"
        y.backward()
    _check_same(run, atts)
    rel = torch.eye(n, dtype=torch.float64)
    out_layers = []
    for a in atts:
        cam = (a.grad[0] * a[0]).detach().double().clamp(min=0).mean(dim=0)  # [query, key]
        rel = rel + cam @ rel
        out_layers.append(rel.clone())
    m.zero_grad(set_to_none=True)
    res = torch.stack(out_layers).numpy()  # [layer, query, key]
    return _renorm(res), desc


def _position(i: Any, n: int) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
        raise AttnmapError(f"target must be a token position in 0..{n - 1} (not {i!r})")
    return int(i) % n


def _tok(tok: Any, i: int) -> str:
    try:
        return str(tok.convert_ids_to_tokens(i))
    except Exception:  # noqa: BLE001 - a label only
        return str(i)


def transform(
    run: AttentionRun, *, words: bool = False, method: str = "raw", target: int | None = None
) -> AttentionRun:
    """A NEW run holding what `method` computes, optionally merged into words.

    ``rollout`` and ``grad`` give one head per layer (the running result after that layer);
    ``value-norm`` keeps every head. ``run.model["method"]`` names the method, so plots, HTML
    and the viewer show the new run unchanged. Words are merged after the method.
    """
    key = method_key(method)
    if key in ("raw", "rollout"):
        return numpy_transform(run, words=words, method=key)
    if key == "value-norm":
        vn = value_norm(run).astype(np.float32)  # [layer, head, query, key]
        st = run.stack("self")
        stacks = {"self": AttentionStack("self", list(vn), st.mask(0), st.layer_masks)}
        note = "norm-based attention ‖α·f(x)‖ (Kobayashi et al. 2020), rows scaled to sum to 1"
        return method_run(run, key, stacks, note, words=words)
    g, desc = _grad(run, target=target, model=None)
    g = g.astype(np.float32)
    reach = reach_masks(run.stack("self"))
    stacks = {"self": AttentionStack("self", [x[None] for x in g], reach[0], reach)}
    note = (f"attention × gradient (Chefer et al. 2021) for the {desc}; layer l shows the "
            "relevance after layer l, rows scaled to sum to 1")
    run2 = method_run(run, key, stacks, note, words=words)
    run2.model["method_target"] = desc
    return run2
