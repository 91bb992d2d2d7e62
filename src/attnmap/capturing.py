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
# (resolved id, trust_remote_code, device, torch_dtype, device_map) -> Loaded
_CACHE: dict[tuple[str, bool, str, str, str | None], Any] = {}


def get_model(model: Any = None, *, tokenizer: Any = None, trust_remote_code: bool = False,
              progress: bool = False, device: str | None = "auto",
              torch_dtype: str | None = "auto", device_map: str | None = None) -> Any:
    """A loaded model, kept for reuse in this process (the Python API calls capture often).

    `model` may also be a model already in memory (with its `tokenizer`) or a pipeline."""
    from .models import Loaded, from_object, load, resolve

    if isinstance(model, Loaded):
        return model
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return from_object(model, tokenizer)
    key = (resolve(model)[1], trust_remote_code, device or "auto", str(torch_dtype or "auto"),
           device_map)
    if key not in _CACHE:
        _CACHE[key] = load(model, trust_remote_code=trust_remote_code, progress=progress,
                           device=device, torch_dtype=torch_dtype, device_map=device_map)
    return _CACHE[key]


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise AttnmapError(f"{what} must be a string (not {type(text).__name__})")
    if not text.strip():
        raise AttnmapError(f"{what} is empty; give some text to look at")
    if "\x00" in text:
        raise AttnmapError(f"{what} contains NUL bytes; remove them (is it a binary file?)")
    return text


def weights_limit(info: dict[str, Any], budget: int = WEIGHTS_BUDGET) -> int:
    """The longest input whose float32 weights fit `budget` bytes."""
    per = 4 * int(info.get("layers") or 1) * int(info.get("heads") or 1)
    return int((budget / per) ** 0.5)


def capture(
    text: str | list[dict[str, str]],
    model: str | os.PathLike[str] | Any | None = None,
    *,
    tokenizer: Any = None,
    target: str | None = None,
    max_new_tokens: int = 20,
    truncate: bool = False,
    special_tokens: bool = True,
    trust_remote_code: bool = False,
    progress: bool = False,
    store: str = "auto",
    predictions: bool = False,
    top_k: int = 5,
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    device_map: str | None = None,
) -> AttentionRun:
    """Run `model` on `text` once and return every layer's and head's attention.

    `text` is a string, or a list of chat messages (``{"role": …, "content": …}``) that go
    through the tokenizer's own chat template (the ids are exactly what
    ``apply_chat_template`` gives; each token records its message and role).

    `model` is a hub id, a local directory, a model already in memory (pass its `tokenizer`
    too; a transformers pipeline carries its own), or None for the bundled all-MiniLM-L6-v2.
    For encoder-decoders the decoder reads `target`, or the model's own greedy continuation
    (up to `max_new_tokens`) when none is given. `special_tokens=False` leaves out the
    tokenizer's BOS/EOS/[CLS]… around plain text.

    Every layer's mask is the one the model really used (causal, sliding window, chunk …):
    ``run.mask(layer)``.

    `store` is ``"weights"`` (every layer's weights, as transformers returns them),
    ``"qk"`` (queries and keys; each layer's weights are computed when read, for long
    inputs) or ``"auto"``: weights unless they would pass ``WEIGHTS_BUDGET`` bytes.

    `device` (auto, cpu, cuda, mps), `torch_dtype` (auto: float32 on the CPU, the checkpoint's
    dtype on a GPU; float32, bfloat16, float16) and `device_map` ("auto", with accelerate)
    choose where a model loaded here runs; a model in memory runs where it is.

    With `predictions`, the run also records what the model predicted at each position
    (``run.extra["predictions"]``, see :mod:`attnmap.predict`), top `top_k` each.
    """
    if store not in ("auto", "weights", "qk"):
        raise AttnmapError(f"store must be auto, weights or qk (not {store!r})")
    messages = None
    if isinstance(text, list):
        from ._chat import check_messages

        messages = check_messages(text)
    else:
        check_text(text)
    loaded = get_model(model, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                       progress=progress, device=device, torch_dtype=torch_dtype,
                       device_map=device_map)
    import torch

    tok = loaded.tokenizer
    info = loaded.info
    if target is not None and info["architecture"] != "encoder-decoder":
        raise AttnmapError(
            f"target is the decoder's text of an encoder-decoder model; {info['id']!r} is "
            f"{info['architecture']}-only and reads one text: leave target (--target) out")
    extra: dict[str, Any] = {}
    if messages is not None:
        text, ids, tokens = _encode_chat(tok, messages, info, truncate=truncate)
        extra["messages"] = messages
    else:
        assert isinstance(text, str)  # a list of messages took the branch above
        enc = _encode(tok, text, info, truncate=truncate, special_tokens=special_tokens)
        ids = enc["input_ids"]
        tokens = make_tokens(tok, ids, enc.get("offset_mapping"))
    dev = _input_device(loaded.model)
    input_ids = torch.tensor([ids], device=dev)
    if info["architecture"] == "encoder-decoder":
        if store == "qk":
            raise AttnmapError("store='qk' is for encoder-only and decoder-only models")
        run = _capture_seq2seq(loaded, text, tokens, input_ids, target, max_new_tokens,
                               predictions=predictions, top_k=top_k)
        run.extra.update(extra)
        return run
    if predictions:
        _check_lm_head(loaded)
    n = len(ids)
    weight_bytes = 4 * n * n * int(info.get("layers") or 1) * int(info.get("heads") or 1)
    if store == "qk" or (store == "auto" and weight_bytes > WEIGHTS_BUDGET):
        stack, logits = _capture_qk(loaded, input_ids, predictions)
        run = AttentionRun(text=text, tokens=tokens, stacks={"self": stack},
                           model=_facts(info, stack), extra=extra)
        if predictions:
            _add_predictions(run, loaded, logits, top_k)
        return run

    out, stack = forward_weights(loaded, input_ids)
    run = AttentionRun(text=text, tokens=tokens, stacks={"self": stack},
                       model=_facts(info, stack), extra=extra)
    if predictions:
        _add_predictions(run, loaded, out.logits, top_k)
    return run


def forward_weights(loaded: Any, input_ids: Any) -> tuple[Any, AttentionStack]:
    """One eager forward of a self-attention model: its output and the ``self`` stack, each
    layer with the mask it used."""
    import torch

    from ._qk import _Unsupported, recording

    info = loaded.info
    kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  output_attentions=True, return_dict=True)
    rec = None
    with torch.no_grad():
        try:
            with recording(loaded.model, "eager") as rec:
                out = loaded.model(**kwargs)
        except _Unsupported:  # the model computes attention its own way: run it as loaded
            rec = None
            out = loaded.model(**kwargs)
    layers = _layers(out.attentions, info)
    masks = _recorded_masks(rec, len(layers), int(input_ids.shape[1]), bool(info["causal"]))
    return out, AttentionStack("self", layers, masks[0], masks)


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        try:
            return next(model.parameters()).device
        except StopIteration:
            return "cpu"


def _recorded_masks(rec: Any, n_layers: int, n: int, causal: bool) -> list[np.ndarray]:
    """Each layer's mask as the model used it; where the model does not let attnmap see its
    attention calls, the mask its kind implies (the causal future, or nothing)."""
    if rec is not None and len(rec.masks) == n_layers and all(
            m is not None and m.shape == (n, n) for m in rec.masks):
        return list(rec.masks)
    shared = np.triu(np.ones((n, n), dtype=bool), k=1) if causal else np.zeros((n, n), bool)
    return [shared] * n_layers


def _facts(info: dict[str, Any], stack: AttentionStack) -> dict[str, Any]:
    """Model facts, with what the recorded masks show: causal or not, windowed layers."""
    facts = dict(info)
    masks, index = stack.distinct_masks()
    n = masks[0].shape[0]
    if n > 1:
        facts["causal"] = all(_hides_future(m) for m in masks)
        if facts["causal"] and facts.get("architecture") == "encoder":
            facts["architecture"] = "decoder"
    if not stack.uniform:
        facts["layer_masks"] = index
    return facts


def _takes(model: Any, name: str) -> bool:
    """Whether `model`'s forward names the argument `name`."""
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _hides_future(mask: np.ndarray) -> bool:
    """Whether `mask` ``[query, key]`` hides every key after its query, checked a block of
    rows at a time (at 32,768 tokens a whole upper triangle would be 1 GiB)."""
    n = mask.shape[1]
    cols = np.arange(n)[None, :]
    step = max(1, (4 << 20) // max(n, 1))  # rows per block: about 4 MB of bools
    for start in range(0, mask.shape[0], step):
        rows = np.arange(start, min(mask.shape[0], start + step))[:, None]
        if not (mask[start:start + step] | (cols <= rows)).all():
            return False
    return True


def _capture_qk(loaded: Any, input_ids: Any, predictions: bool) -> tuple[AttentionStack, Any]:
    """Run the model once keeping queries and keys; each layer's mask comes with them."""
    import torch

    from ._qk import _Unsupported, bypass_error, qk_layers, recording

    model, info = loaded.model, loaded.info
    # The bare transformer (no LM head): logits over a 50k vocabulary at 4k tokens would
    # cost more memory than all the queries and keys together.
    body = model if predictions else getattr(model, "base_model", model)
    limit = weights_limit(info)
    kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if _takes(body, "use_cache"):  # a key/value cache would hold every layer's values too
        kwargs["use_cache"] = False
    try:
        with torch.no_grad(), recording(model, "qk") as rec:
            out = body(**kwargs)
    except _Unsupported:
        raise bypass_error(info["id"], type(model).__name__, limit) from None
    n_layers = int(info.get("layers") or 0)
    if not rec.q or (n_layers and len(rec.q) != n_layers) or rec.bias:
        raise bypass_error(info["id"], type(model).__name__, limit, bias=rec.bias)
    layers = qk_layers(rec)
    stack = AttentionStack("self", layers, layers.masks[0], layers.masks)
    layers.masks = stack.layer_masks  # the stack's deduplicated masks
    return stack, (out.logits if predictions else None)


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
                                                  top_k=top_k)
        run.extra["predictions_kind"] = "next-token"
    else:
        run.extra["predictions"] = predict.masked(logits[0], loaded.tokenizer, run.tokens,
                                                  top_k=top_k)
        run.extra["predictions_kind"] = "masked"


def _encode_chat(tok: Any, messages: list[dict[str, str]], info: dict[str, Any], *,
                 truncate: bool) -> tuple[str, list[int], list[Any]]:
    from ._chat import encode_chat, tag_tokens

    text, ids, offsets, spans = encode_chat(tok, messages)
    limit = info.get("max_length")
    if limit and len(ids) > limit:
        if not truncate:
            raise AttnmapError(
                f"the chat is {len(ids)} tokens, longer than {info['id']}'s maximum of "
                f"{limit}; shorten it or pass --truncate"
            )
        warnings.warn(f"the chat is {len(ids)} tokens; keeping the first {limit}",
                      AttnmapWarning, stacklevel=3)
        ids = ids[:limit]
        offsets = offsets[:limit] if offsets is not None else None
    tokens = tag_tokens(make_tokens(tok, ids, offsets), offsets, spans)
    return text, ids, tokens


def _encode(tok: Any, text: str, info: dict[str, Any], *, truncate: bool,
            special_tokens: bool = True) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"add_special_tokens": special_tokens}
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
    decoder_input_ids = torch.tensor([dec_ids], device=input_ids.device)
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
        run.extra["predictions"] = predict.causal(out.logits[0], tok, target_tokens, top_k=top_k)
        run.extra["predictions_kind"] = "decoder"
    return run
