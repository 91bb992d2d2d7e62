"""What the model predicted, position by position, to read beside the attention map.

Causal LMs: at each position the top-k next tokens, and the probability, rank and surprisal of
the token that really comes next. Masked LMs: the top-k fill-ins at each mask token.
Encoder-decoders: the decoder's top-k at each step, and the next decoder token's numbers.
Stored in the run as ``run.extra["predictions"]``: a list with one object per position,
``{"position", "token", "top": [{"token", "p"}], "next": {"token", "p", "rank",
"surprisal"} | None}`` (surprisal in bits).
"""

from __future__ import annotations

import math
from typing import Any

from ._errors import AttnmapError
from .tokens import make_tokens

DEFAULT_K = 5


def from_logits(
    logits: Any,
    tokenizer: Any,
    tokens: list[Any],
    next_ids: list[int | None],
    *,
    top_k: int = DEFAULT_K,
    positions: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Turn logits ``[position, vocab]`` into prediction records (softmax in float32)."""
    import torch

    if top_k < 1:
        raise AttnmapError(f"top_k must be at least 1 (not {top_k})")
    probs = torch.softmax(logits.float(), dim=-1)  # [position, vocab]
    top_k = min(top_k, probs.shape[-1])
    top_p, top_i = probs.topk(top_k, dim=-1)  # [position, k]
    out = []
    for pos in positions if positions is not None else range(probs.shape[0]):
        ids = [int(i) for i in top_i[pos]]
        names = [t.text for t in make_tokens(tokenizer, ids)]
        rec: dict[str, Any] = {
            "position": pos,
            "token": tokens[pos].text,
            "top": [{"token": n, "p": float(p)} for n, p in zip(names, top_p[pos])],
            "next": None,
        }
        nxt = next_ids[pos]
        if nxt is not None:
            p_true = probs[pos, nxt]
            rec["next"] = {
                "token": make_tokens(tokenizer, [nxt])[0].text,
                "p": float(p_true),
                "rank": int((probs[pos] > p_true).sum()) + 1,
                "surprisal": float(-math.log2(max(float(p_true), 1e-45))),
            }
        out.append(rec)
    return out


def causal(logits: Any, tokenizer: Any, tokens: list[Any], *, top_k: int = DEFAULT_K
           ) -> list[dict[str, Any]]:
    ids = [t.id for t in tokens]
    next_ids: list[int | None] = [*ids[1:], None]
    return from_logits(logits, tokenizer, tokens, next_ids, top_k=top_k)


def masked(logits: Any, tokenizer: Any, tokens: list[Any], *, top_k: int = DEFAULT_K
           ) -> list[dict[str, Any]]:
    mask_id = getattr(tokenizer, "mask_token_id", None)
    where = [i for i, t in enumerate(tokens) if mask_id is not None and t.id == mask_id]
    if not where:
        mask = getattr(tokenizer, "mask_token", None) or "[MASK]"
        raise AttnmapError(
            f"a masked language model predicts at mask tokens, and the text has none; "
            f"write {mask} where a word should be filled in"
        )
    return from_logits(logits, tokenizer, tokens, [None] * len(tokens), top_k=top_k,
                       positions=where)
