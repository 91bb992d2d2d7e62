"""Run the model once and return an AttentionRun (numpy from here on)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ._errors import AttnmapError, AttnmapWarning
from .run import AttentionRun, AttentionStack
from .tokens import make_tokens

# Above this many bytes of float32 weights, "auto" keeps queries and keys instead
# (12 layers × 12 heads pass it between 1,024 and 2,048 tokens).
WEIGHTS_BUDGET = 1 << 30
_CACHE: dict[tuple[str, bool], Any] = {}


def get_model(model: Any = None, *, trust_remote_code: bool = False, progress: bool = False):
    """A loaded model, kept for reuse in this process (the Python API calls capture often)."""
    from .models import Loaded, load, resolve

    if isinstance(model, Loaded):
        return model
    key = (resolve(model)[1], trust_remote_code)
    if key not in _CACHE:
        _CACHE[key] = load(model, trust_remote_code=trust_remote_code, progress=progress)
    return _CACHE[key]


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise AttnmapError(f"{what} must be a string (not {type(text).__name__})")
    if not text.strip():
        raise AttnmapError(f"{what} is empty; give some text to look at")
    if "\x00" in text:
        raise AttnmapError(f"{what} contains NUL bytes; remove them (is it a binary file?)")
    return text


def capture(
    text: str,
    model: str | os.PathLike[str] | Any | None = None,
    *,
    target: str | None = None,
    max_new_tokens: int = 20,
    truncate: bool = False,
    trust_remote_code: bool = False,
    progress: bool = False,
    store: str = "auto",
    predictions: bool = False,
    top_k: int = 5,
) -> AttentionRun:
    """Run `model` on `text` once and return every layer's and head's attention.

    `model` is a hub id, a local directory, a :class:`attnmap.models.Loaded`, or None for the
    bundled all-MiniLM-L6-v2. For encoder-decoders the decoder reads `target`, or the model's
    own greedy continuation (up to `max_new_tokens`) when none is given.

    `store` is ``"weights"`` (every layer's weights, as transformers returns them),
    ``"qk"`` (queries and keys; each layer's weights are computed when read, for long
    inputs) or ``"auto"``: weights unless they would pass ``WEIGHTS_BUDGET`` bytes.

    With `predictions`, the run also records what the model predicted at each position
    (``run.extra["predictions"]``, see :mod:`attnmap.predict`), top `top_k` each.
    """
    check_text(text)
    loaded = get_model(model, trust_remote_code=trust_remote_code, progress=progress)
    import torch

    tok = loaded.tokenizer
    info = loaded.info
    enc = _encode(tok, text, info, truncate=truncate)
    ids = enc["input_ids"]
    tokens = make_tokens(tok, ids, enc.get("offset_mapping"))
    input_ids = torch.tensor([ids])
    if store not in ("auto", "weights", "qk"):
        raise AttnmapError(f"store must be auto, weights or qk (not {store!r})")
    if info["architecture"] == "encoder-decoder":
        if store == "qk":
            raise AttnmapError("store='qk' is for encoder-only and decoder-only models")
        run = _capture_seq2seq(loaded, text, tokens, input_ids, target, max_new_tokens,
                               predictions=predictions, top_k=top_k)
        return run
    if predictions:
        _check_lm_head(loaded)
    n = len(ids)
    weight_bytes = 4 * n * n * int(info.get("layers") or 1) * int(info.get("heads") or 1)
    if store == "qk" or (store == "auto" and weight_bytes > WEIGHTS_BUDGET):
        from ._qk import forward_qk

        layers, logits = forward_qk(loaded.model, input_ids, bool(info["causal"]),
                                    logits=predictions)
        stacks = {"self": AttentionStack("self", layers, layers.masked)}
        run = AttentionRun(text=text, tokens=tokens, stacks=stacks, model=dict(info))
        if predictions:
            _add_predictions(run, loaded, logits, top_k)
        return run

    with torch.no_grad():
        out = loaded.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            output_attentions=True,
            return_dict=True,
        )
    layers = _layers(out.attentions, info)
    masked = np.triu(np.ones((n, n), dtype=bool), k=1) if info["causal"] else np.zeros(
        (n, n), dtype=bool
    )
    stacks = {"self": AttentionStack("self", layers, masked)}
    run = AttentionRun(text=text, tokens=tokens, stacks=stacks, model=dict(info))
    if predictions:
        _add_predictions(run, loaded, out.logits, top_k)
    return run


def _check_lm_head(loaded: Any) -> None:
    if getattr(loaded.model, "get_output_embeddings", lambda: None)() is None:
        raise AttnmapError(
            f"model {loaded.id!r} ({type(loaded.model).__name__}) has no language-model head, "
            "so it predicts no tokens; use a causal, masked or encoder-decoder LM"
        )


def _add_predictions(run: AttentionRun, loaded: Any, logits: Any, top_k: int) -> None:
    from . import predict

    if loaded.info["causal"]:
        run.extra["predictions"] = predict.causal(logits[0], loaded.tokenizer, run.tokens,
                                                  k=top_k)
        run.extra["predictions_kind"] = "next-token"
    else:
        run.extra["predictions"] = predict.masked(logits[0], loaded.tokenizer, run.tokens,
                                                  k=top_k)
        run.extra["predictions_kind"] = "masked"


def _encode(tok: Any, text: str, info: dict[str, Any], *, truncate: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"add_special_tokens": True}
    if getattr(tok, "is_fast", False):
        kwargs["return_offsets_mapping"] = True
    enc = dict(tok(text, **kwargs))
    limit = info.get("max_length")
    n = len(enc["input_ids"])
    if limit and n > limit:
        if not truncate:
            raise AttnmapError(
                f"text is {n} tokens, longer than {info['id']}'s maximum of {limit}; "
                "shorten it or pass --truncate"
            )
        warnings.warn(
            f"text is {n} tokens; keeping the first {limit} ({info['id']}'s maximum)",
            AttnmapWarning,
            stacklevel=3,
        )
        enc = dict(tok(text, truncation=True, max_length=limit, **kwargs))
    return enc


def _layers(attentions: Any, info: dict[str, Any]) -> list[np.ndarray]:
    if not attentions or any(a is None for a in attentions):
        raise AttnmapError(
            f"model {info['id']!r} returned no attention weights (its attention "
            "implementation does not compute them); load it with attn_implementation='eager'"
        )
    # each [batch=1, head, query, key] → [head, query, key]
    return [a[0].detach().to(dtype=a.dtype).float().cpu().numpy() for a in attentions]


def _capture_seq2seq(
    loaded: Any,
    text: str,
    tokens: list[Any],
    input_ids: Any,
    target: str | None,
    max_new_tokens: int,
    *,
    predictions: bool = False,
    top_k: int = 5,
) -> AttentionRun:
    import torch

    tok, model, info = loaded.tokenizer, loaded.model, loaded.info
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(model.generation_config, "decoder_start_token_id", None)
    if start is None:
        start = tok.pad_token_id if tok.pad_token_id is not None else 0
    attention_mask = torch.ones_like(input_ids)
    if target is not None:
        check_text(target, "target text")
        target_ids = tok(text_target=target, add_special_tokens=True)["input_ids"]
        dec_ids = [int(start), *target_ids]
    else:
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
        dec_ids = [int(t) for t in gen[0].tolist()]
        pad = tok.pad_token_id
        # Drop padding after the end of the sequence but keep the start token.
        while len(dec_ids) > 1 and pad is not None and dec_ids[-1] == pad and pad != start:
            dec_ids.pop()
    decoder_input_ids = torch.tensor([dec_ids])
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            output_attentions=True,
            return_dict=True,
        )
    target_tokens = make_tokens(tok, dec_ids, None)
    n, m = input_ids.shape[1], len(dec_ids)
    stacks = {
        "encoder": AttentionStack(
            "encoder", _layers(out.encoder_attentions, info), np.zeros((n, n), dtype=bool)
        ),
        "decoder": AttentionStack(
            "decoder",
            _layers(out.decoder_attentions, info),
            np.triu(np.ones((m, m), dtype=bool), k=1),
        ),
        "cross": AttentionStack(
            "cross", _layers(out.cross_attentions, info), np.zeros((m, n), dtype=bool)
        ),
    }
    generated = target is None
    target_text = target if target is not None else tok.decode(dec_ids, skip_special_tokens=True)
    model_info = dict(info)
    model_info["target_generated"] = generated
    run = AttentionRun(
        text=text,
        tokens=tokens,
        stacks=stacks,
        model=model_info,
        target_text=target_text,
        target_tokens=target_tokens,
    )
    if predictions:
        from . import predict

        _check_lm_head(loaded)
        run.extra["predictions"] = predict.causal(out.logits[0], tok, target_tokens, k=top_k)
        run.extra["predictions_kind"] = "decoder"
    return run
