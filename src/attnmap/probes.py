"""Probe inputs built from token ids: the repeated random sequence that finds induction heads."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import AttnmapError
from .run import AttentionRun


def repeat_ids(loaded: Any, *, length: int = 50, seed: int = 0) -> list[int]:
    """``[BOS] + r + r`` with ``r`` = `length` random non-special ids of the model's vocabulary.

    BOS is the tokenizer's BOS token, else its CLS token, else nothing. Ids are drawn without
    replacement when the vocabulary is big enough, so each token of ``r`` has one earlier copy.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise AttnmapError(f"--length must be a whole number ≥ 1 (not {length!r})")
    tok = loaded.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    limit = loaded.info.get("max_length")
    total = 2 * length + (bos is not None)
    if limit and total > limit:
        raise AttnmapError(
            f"--length {length} makes {total} tokens, more than {loaded.info['id']}'s maximum "
            f"of {limit}; use --length {(limit - (bos is not None)) // 2} or less"
        )
    vocab = min(len(tok), int(loaded.info.get("vocab_size") or len(tok)))
    special = set(getattr(tok, "all_special_ids", []) or [])
    pool = np.array([i for i in range(vocab) if i not in special], dtype=np.int64)
    if len(pool) == 0:
        raise AttnmapError("the model's vocabulary has no ordinary tokens to draw from")
    rng = np.random.default_rng(seed)
    r = rng.choice(pool, size=length, replace=length > len(pool)).tolist()
    return ([int(bos)] if bos is not None else []) + r + r


def capture_ids(ids: list[int], model: Any = None) -> AttentionRun:
    """Run `model` on token ids directly (no text to tokenize) and return the run."""
    import torch

    from .capturing import get_model
    from .tokens import make_tokens

    loaded = get_model(model)
    info = loaded.info
    if info["architecture"] == "encoder-decoder":
        raise AttnmapError(
            f"probes need a decoder-only or encoder model; {info['id']!r} is an encoder-decoder"
        )
    from .capturing import _facts, forward_weights

    input_ids = torch.tensor([list(ids)])
    _, stack = forward_weights(loaded, input_ids)  # each layer with the mask it used
    tokens = make_tokens(loaded.tokenizer, list(ids), None)
    text = loaded.tokenizer.decode(list(ids), skip_special_tokens=False)
    return AttentionRun(text=text, tokens=tokens, stacks={"self": stack},
                        model=_facts(info, stack))


def repeat_probe(model: Any = None, *, length: int = 50, seed: int = 0) -> AttentionRun:
    """Capture the repeated random sequence; ``run.extra['probe']`` says how it was made."""
    from .capturing import get_model

    loaded = get_model(model)
    run = capture_ids(repeat_ids(loaded, length=length, seed=seed), loaded)
    run.extra["probe"] = {"kind": "repeat", "length": int(length), "seed": int(seed)}
    return run
