"""Generate text and keep the attention the model used at every decoding step.

``attnmap.generate`` runs the model's own ``model.generate`` (so the ids are exactly what
``model.generate`` gives with the same settings) under attnmap's attention recorder, with a
full key/value cache. Each decoding step feeds one token and computes one attention row per
layer and head: the row of that token, over every token before it. The run's matrix is
assembled from those rows:

* rows of the prompt come from the first forward (the prompt in one pass, as ``capture``);
* the row of generated token ``g`` comes from the step that fed ``g`` — the step that chose
  the next token. The last generated token is fed once more, through the same cache, so that
  its row is there too (its prediction is not used).

With ``store="weights"`` the rows are the ``attentions`` that ``model.generate`` returns
(``output_attentions=True``); with ``store="qk"`` (long generations) each step keeps only its
new query rows, the keys are read once from the final cache, and each layer's weights are
computed when read (:class:`attnmap.qkweights.QKLayers`), so memory grows with the tokens,
not with their square.

Per step the predictions are kept in the shape :mod:`attnmap.predict` writes (one record per
query position, ``next`` = the token chosen), plus ``entropy`` (bits) of the model's
distribution. Probabilities are the model's own (softmax of its logits, before temperature or
top-p).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ._errors import AttnmapError
from .run import AttentionRun, AttentionStack
from .tokens import make_tokens

GEN_QK_IMPL = "attnmap_generate_qk"
_STATE = threading.local()


# --- checks ---------------------------------------------------------------------------------

def _check_options(max_new_tokens: Any, do_sample: bool, temperature: Any, top_p: Any,
                   seed: Any, stop: Any, top_k: Any, store: str) -> list[str] | None:
    if store not in ("auto", "weights", "qk"):
        raise AttnmapError(f"store must be auto, weights or qk (not {store!r})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise AttnmapError(f"max_new_tokens must be a whole number (not {max_new_tokens!r})")
    if max_new_tokens < 1:
        raise AttnmapError(f"max_new_tokens must be at least 1 (not {max_new_tokens}); "
                           "it is how many tokens the model may write")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise AttnmapError(f"top_k must be at least 1 (not {top_k!r})")
    if not do_sample and (temperature is not None or top_p is not None):
        raise AttnmapError("temperature and top_p shape sampling, and generation is greedy by "
                           "default; add do_sample=True (--sample) or leave them out")
    if temperature is not None and not (isinstance(temperature, (int, float))
                                        and math.isfinite(temperature) and temperature > 0):
        raise AttnmapError(f"temperature must be a number above 0 (not {temperature!r})")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise AttnmapError(f"top_p must be above 0 and at most 1 (not {top_p!r})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise AttnmapError(f"seed must be a whole number ≥ 0 (not {seed!r})")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not stops or not all(isinstance(s, str) and s for s in stops):
        raise AttnmapError("stop must be a non-empty string (or a list of them)")
    return stops


def _check_generative(loaded: Any, do_sample: bool) -> None:
    model = loaded.model
    head = getattr(model, "get_output_embeddings", lambda: None)()
    can = getattr(model, "can_generate", lambda: False)()
    what = "sample" if do_sample else "generate text"
    if head is None or not can:
        raise AttnmapError(
            f"model {loaded.id!r} ({type(model).__name__}) has no language-model head that "
            f"writes text, so it cannot {what}; use a causal LM (…ForCausalLM) or an "
            "encoder-decoder (…ForConditionalGeneration)")
    if not loaded.info.get("causal") and loaded.info["architecture"] != "encoder-decoder":
        raise AttnmapError(
            f"model {loaded.id!r} is a {loaded.info['architecture']} (it fills in masks, it "
            "does not write on); generate needs a causal or encoder-decoder LM")


def _check_lengths(info: dict[str, Any], n: int, max_new_tokens: int, seq2seq: bool) -> None:
    limit = info.get("max_length")
    if not limit:
        return
    name = info["id"]
    if seq2seq:
        if n > limit:
            raise AttnmapError(f"the prompt is {n} tokens, longer than {name}'s maximum of "
                               f"{limit}; shorten it")
        if max_new_tokens + 1 > limit:
            raise AttnmapError(f"max_new_tokens {max_new_tokens} is above {name}'s limit; "
                               f"use at most {limit - 1}")
        return
    if n >= limit:
        raise AttnmapError(f"the prompt is {n} tokens and {name}'s maximum is {limit}; no room "
                           "is left to generate: shorten the prompt")
    if n + max_new_tokens > limit:
        raise AttnmapError(f"max_new_tokens {max_new_tokens} is above what fits: the prompt is "
                           f"{n} tokens of {name}'s maximum of {limit}; use at most "
                           f"{limit - n}")


# --- per-step predictions -------------------------------------------------------------------

class _Steps:
    """A forward hook that keeps the last position's logits, and a stopping criterion that,
    once generate has chosen the token, keeps that step's numbers (on the model's device)."""

    def __init__(self, top_k: int, on_step: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.top_k = top_k
        self.on_step = on_step  # (step, chosen id) once a step has chosen its token
        self.should_stop = should_stop  # asked after each step: True ends generation there
        self.cancelled = False
        self.pending: Any = None
        self.rows: list[Any] = []  # per step: tensor [2k + 3] = top ids, top p, id, p, rank, H

    def hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        logits = getattr(output, "logits", None)
        if logits is not None:
            self.pending = logits[0, -1].detach()

    def __call__(self, input_ids: Any, scores: Any, **_kw: Any) -> Any:
        import torch

        if self.pending is not None:
            probs = torch.softmax(self.pending.float(), dim=-1)
            k = min(self.top_k, probs.shape[-1])
            top_p, top_i = probs.topk(k)
            chosen = input_ids[0, -1]
            p = probs[chosen]
            rank = (probs > p).sum() + 1
            entropy = torch.special.entr(probs).sum() / math.log(2)
            self.rows.append(torch.cat([top_i.float(), top_p, torch.stack(
                [chosen.float(), p, rank.float(), entropy])]))
            self.pending = None
            if self.on_step is not None:
                self.on_step(len(self.rows) - 1, int(chosen))
        if self.should_stop is not None and not self.cancelled and self.should_stop():
            self.cancelled = True
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool,
                          device=input_ids.device)

    def records(self, tokenizer: Any, query_tokens: list[Any], first: int) -> list[dict[str, Any]]:
        """One record per step; step s reads at query position ``first + s``."""
        if not self.rows:
            return []
        import torch

        data = torch.stack(self.rows).double().cpu().numpy()
        k = (data.shape[1] - 4) // 2
        out = []
        for s, row in enumerate(data):
            ids = [int(i) for i in row[:k]]
            names = [t.text for t in make_tokens(tokenizer, ids)]
            chosen, p, rank, entropy = int(row[2 * k]), float(row[2 * k + 1]), \
                int(row[2 * k + 2]), float(row[2 * k + 3])
            pos = first + s
            out.append({
                "position": pos,
                "token": query_tokens[pos].text,
                "top": [{"token": n, "p": float(q)} for n, q in zip(names, row[k:2 * k])],
                "next": {"token": make_tokens(tokenizer, [chosen])[0].text, "p": p,
                         "rank": rank, "surprisal": float(-math.log2(max(p, 1e-45)))},
                "entropy": max(entropy, 0.0),
            })
        return out


# --- queries-and-keys recording for long generations ----------------------------------------

class _QKSteps:
    """Per layer: the new query rows of every step, the latest keys (the whole cache), the
    mask row of every step, and the layer's scaling options."""

    def __init__(self) -> None:
        from ._qk import _Recording

        self.masker = _Recording("qk")
        self.layer_of: dict[int, int] = {}
        self.q: list[list[np.ndarray]] = []
        self.k: list[Any] = []
        self.masks: list[list[np.ndarray]] = []
        self.scaling: list[float] = []
        self.softcap: list[float | None] = []
        self.sinks: list[np.ndarray | None] = []
        self.bias = False

    def layer(self, module: Any) -> int:
        i = self.layer_of.get(id(module))
        if i is None:
            i = self.layer_of[id(module)] = len(self.q)
            self.q.append([])
            self.k.append(None)
            self.masks.append([])
            self.scaling.append(1.0)
            self.softcap.append(None)
            self.sinks.append(None)
        return i


def _gen_qk(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
            scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> Any:
    import torch

    from ._qk import _qk_record

    out = _qk_record(module, query, key, value, attention_mask, scaling=scaling,
                     dropout=dropout, **kwargs)  # attnmap's own recorder is off here
    st: _QKSteps | None = getattr(_STATE, "steps", None)
    if st is None:
        return out
    if kwargs.get("position_bias") is not None or kwargs.get("alibi") is not None:
        st.bias = True
    if attention_mask is not None and attention_mask.dtype != torch.bool and not st.bias:
        low = torch.finfo(attention_mask.dtype).min / 2
        st.bias = bool(((attention_mask != 0) & (attention_mask > low)).any())
    i = st.layer(module)
    st.q[i].append(query[0].detach().float().cpu().numpy())
    st.k[i] = key[0].detach()  # the cache so far: the last step's is every key
    st.masks[i].append(st.masker.mask_of(module, attention_mask, query.shape[2], key.shape[2]))
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    st.scaling[i] = float(scaling)
    cap = kwargs.get("softcap")
    st.softcap[i] = None if cap is None else float(cap)
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    st.sinks[i] = None if sinks is None else sinks.detach().float().reshape(-1).cpu().numpy()
    return out


@contextmanager
def _qk_steps(model: Any) -> Iterator[_QKSteps]:
    """Generate with `model` keeping only each step's new queries (and the final keys)."""
    from transformers.masking_utils import sdpa_mask

    from ._qk import attention_function, fixed_mmap_threshold, register_attention

    register_attention(GEN_QK_IMPL, _gen_qk, sdpa_mask)
    steps = _QKSteps()
    with attention_function(model, GEN_QK_IMPL), fixed_mmap_threshold():
        _STATE.steps = steps
        try:
            yield steps
        finally:
            _STATE.steps = None


# --- the public function --------------------------------------------------------------------

def generate(
    prompt: str | list[dict[str, str]],
    model: str | os.PathLike[str] | Any | None = None,
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | list[str] | None = None,
    top_k: int = 5,
    store: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = False,
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    device_map: str | None = None,
    on_token: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AttentionRun:
    """Let the model write up to `max_new_tokens` tokens after `prompt` and return the
    attention of the prompt and every generated token, as the model computed it while writing.

    `prompt` is a string or a list of chat messages (through the tokenizer's chat template,
    with the generation prompt; the generated turn is one more message, role ``assistant``).
    Greedy by default; ``do_sample=True`` samples, shaped by `temperature` and `top_p`, and
    `seed` makes it repeatable. Generation stops at the model's end-of-sequence token, at any
    of the `stop` strings, or after `max_new_tokens`. The ids are exactly ``model.generate``'s
    with the same settings.

    Generated tokens have ``generated=True``. ``run.extra["predictions"]`` holds each step's
    top `top_k` tokens, the chosen token's probability, rank and surprisal, and the entropy
    of the model's distribution (``predictions_kind`` ``"generate"``); ``run.extra
    ["generation"]`` the settings, why it stopped and the prompt's length. `store` is as for
    :func:`attnmap.capture` (``"auto"``: queries and keys once the weights would pass
    ``WEIGHTS_BUDGET``). Encoder-decoders record the encoder, the decoder's self-attention
    and its cross-attention, the generated text as the target.

    For live display: `on_token(step, text)` is called after each decoding step with the
    step's index (0-based) and the chosen token's display text (as in ``run.tokens``);
    `should_stop()` is asked after each step, and once it answers True generation ends there
    (the run keeps the tokens written so far; ``generation["stopped"]`` is
    ``"cancelled"``). Both run in the generating thread.
    """
    from . import capturing
    from .capturing import check_text, get_model, weights_limit

    stops = _check_options(max_new_tokens, do_sample, temperature, top_p, seed, stop, top_k,
                           store)
    messages = None
    if isinstance(prompt, list):
        from ._chat import check_messages

        messages = check_messages(prompt)
    else:
        check_text(prompt, "prompt")
    loaded = get_model(model, tokenizer=tokenizer, trust_remote_code=trust_remote_code,
                       progress=progress, device=device, torch_dtype=torch_dtype,
                       device_map=device_map)
    _check_generative(loaded, do_sample)
    tok, info = loaded.tokenizer, loaded.info
    seq2seq = info["architecture"] == "encoder-decoder"
    if messages is not None:
        text, ids, tokens = _encode_chat(tok, messages)
    else:
        assert isinstance(prompt, str)
        kwargs: dict[str, Any] = {}
        if getattr(tok, "is_fast", False):
            kwargs["return_offsets_mapping"] = True
        enc = tok(prompt, **kwargs)
        text, ids = prompt, list(enc["input_ids"])
        tokens = make_tokens(tok, ids, enc.get("offset_mapping"))
    n = len(ids)
    _check_lengths(info, n, max_new_tokens, seq2seq)
    if seq2seq and store == "qk":
        raise AttnmapError("store='qk' is for decoder-only models; an encoder-decoder's "
                           "generation is kept as weights")
    use_qk = store == "qk" or (store == "auto" and not seq2seq
                               and n + max_new_tokens > weights_limit(
                                   info, capturing.WEIGHTS_BUDGET))

    import torch

    from .capturing import _input_device

    dev = _input_device(loaded.model)
    input_ids = torch.tensor([ids], device=dev)
    gen_kwargs = generate_kwargs(loaded.model, tok, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, temperature=temperature, top_p=top_p,
                                 stop=stops)
    on_step = None
    if on_token is not None:
        def on_step(step: int, token_id: int) -> None:
            on_token(step, make_tokens(tok, [token_id])[0].text)
    steps = _Steps(top_k, on_step, should_stop)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stops,
                "prompt_tokens": n, "store": "qk" if use_qk else "weights"}
    if seed is not None:
        torch.manual_seed(seed)
    if seq2seq:
        return _seq2seq(loaded, text, tokens, input_ids, gen_kwargs, steps, settings, messages)
    if use_qk:
        stacks, gen_ids = _decoder_qk(loaded, input_ids, gen_kwargs, steps)
    else:
        stacks, gen_ids = _decoder_weights(loaded, input_ids, gen_kwargs, steps)
    return _assemble(loaded, text, tokens, gen_ids, stacks, steps, settings, messages,
                     gen_kwargs)


def generate_kwargs(model: Any, tok: Any, *, max_new_tokens: int, do_sample: bool = False,
                    temperature: float | None = None, top_p: float | None = None,
                    stop: list[str] | None = None) -> dict[str, Any]:
    """The settings handed to ``model.generate`` (the same call gives the same ids).

    The end-of-sequence token is the model's generation config's, else the tokenizer's."""
    gc = getattr(model, "generation_config", None)
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                          "num_beams": 1}
    if do_sample:
        if temperature is not None:
            kw["temperature"] = float(temperature)
        if top_p is not None:
            kw["top_p"] = float(top_p)
    eos = getattr(gc, "eos_token_id", None)
    if eos is None and getattr(tok, "eos_token_id", None) is not None:
        kw["eos_token_id"] = eos = tok.eos_token_id
    if getattr(gc, "pad_token_id", None) is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        if isinstance(pad, list):
            pad = pad[0]
        if pad is not None:
            kw["pad_token_id"] = pad
    if stop:
        kw["stop_strings"] = list(stop)
        kw["tokenizer"] = tok
    return kw


def _encode_chat(tok: Any, messages: list[dict[str, str]]) -> tuple[str, list[int], list[Any]]:
    from ._chat import encode_chat, tag_tokens

    text, ids, offsets, spans = encode_chat(tok, messages, add_generation_prompt=True)
    tokens = tag_tokens(make_tokens(tok, ids, offsets), offsets, spans)
    # the generation prompt (after the last message) opens the assistant's turn
    turn = len(messages)
    out = list(tokens)
    for i in range(len(out) - 1, -1, -1):
        if out[i].message is not None:
            break
        out[i] = dataclasses.replace(out[i], message=turn, role="assistant", template=True)
    return text, ids, out


def _run_generate(model: Any, input_ids: Any, gen_kwargs: dict[str, Any], steps: _Steps,
                  **extra: Any) -> Any:
    import torch
    from transformers import StoppingCriteriaList

    handle = model.register_forward_hook(steps.hook)
    try:
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  stopping_criteria=StoppingCriteriaList([steps]),
                                  return_dict_in_generate=True, **gen_kwargs, **extra)
    finally:
        handle.remove()


def _cache_name(fn: Any) -> str:
    """transformers 5 names the cache argument ``cache`` (``past_key_values`` before)."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _last_step(model: Any, out: Any, n_total: int, **extra: Any) -> Any:
    """Feed the last generated token through the cache: the step that gives its row (through
    the bare transformer: its prediction is not needed, and the LM head is a big matmul)."""
    import torch

    seq = out.sequences
    body = getattr(model, "base_model", None) or model
    extra[_cache_name(body.forward)] = _cache_of(out)
    with torch.no_grad():
        return body(input_ids=seq[:, -1:],
                     attention_mask=torch.ones((1, n_total), dtype=torch.long,
                                               device=seq.device),
                     use_cache=True, return_dict=True, **extra)


def _full_cache(model: Any) -> dict[str, Any]:
    """A cache that keeps every key (a sliding-window layer's cache keeps only its window;
    the layer's mask still hides the rest), so every step's row spans every token."""
    from transformers import DynamicCache

    return {_cache_name(model.forward): DynamicCache()}


def _decoder_weights(loaded: Any, input_ids: Any, gen_kwargs: dict[str, Any], steps: _Steps
                     ) -> tuple[dict[str, AttentionStack], list[int]]:
    import torch

    from ._qk import _Unsupported, fixed_mmap_threshold, recording

    model, info = loaded.model, loaded.info
    n = int(input_ids.shape[1])
    rec = None
    # thousands of small per-step tensors between growing caches: without a fixed mmap
    # threshold glibc keeps the freed caches in its heap (twice the peak at 2,048 tokens)
    def run() -> tuple[Any, list[int], Any]:
        out = _run_generate(model, input_ids, gen_kwargs, steps, output_attentions=True,
                            **_full_cache(model))
        gen_ids = [int(t) for t in out.sequences[0, n:].tolist()]
        return out, gen_ids, _last_step(model, out, n + len(gen_ids), output_attentions=True)

    with fixed_mmap_threshold():
        try:
            with recording(model, "eager") as rec:
                out, gen_ids, last = run()
        except _Unsupported:  # the model computes attention its own way: run it as loaded
            rec = None
            out, gen_ids, last = run()
    per_step = [*out.attentions, last.attentions]  # step 0: the prompt; then one row each
    if any(a is None for s in per_step for a in s):
        raise AttnmapError(
            f"model {info['id']!r} returned no attention weights while generating; load it "
            "with attn_implementation='eager'")
    n_layers = len(per_step[0])
    total = n + len(gen_ids)
    heads = int(per_step[0][0].shape[1])
    weights = np.zeros((n_layers, heads, total, total), dtype=np.float32)
    with torch.no_grad():
        weights[:, :, :n, :n] = torch.stack([a[0] for a in per_step[0]]).float().cpu().numpy()
        for s, atts in enumerate(per_step[1:]):
            row = n + s
            keys = int(atts[0].shape[-1])
            if keys != row + 1:
                raise AttnmapError(f"step {s + 1} attended to {keys} keys, not {row + 1}; "
                                   "the model's cache drops keys (a sliding-window cache?)")
            weights[:, :, row, :keys] = torch.stack(
                [a[0, :, -1] for a in atts]).float().cpu().numpy()
    masks = _assemble_masks(rec, n_layers, n, total, bool(info.get("causal")))
    layers = list(weights)
    return {"self": AttentionStack("self", layers, masks[0], masks)}, gen_ids


def _assemble_masks(rec: Any, n_layers: int, n: int, total: int, causal: bool
                    ) -> list[np.ndarray]:
    """Each layer's [token, token] mask from the prompt's mask and each step's mask row."""
    calls = None if rec is None else rec.masks
    steps = total - n + 1
    if calls is None or len(calls) != n_layers * steps or any(m is None for m in calls):
        return [np.triu(np.ones((total, total), bool), 1)] * n_layers
    out = []
    for layer in range(n_layers):
        m = np.ones((total, total), dtype=bool)
        first = calls[layer]
        m[:n, :n] = first[-n:, :n]
        for s in range(1, steps):
            row = calls[s * n_layers + layer]
            m[n + s - 1, : row.shape[1]] = row[-1]
        out.append(m)
    return _dedupe(out)


def _dedupe(masks: list[np.ndarray]) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    out = []
    for m in masks:
        same = next((s for s in seen if np.array_equal(s, m)), None)
        if same is None:
            seen.append(m)
            same = m
        out.append(same)
    return out


def _decoder_qk(loaded: Any, input_ids: Any, gen_kwargs: dict[str, Any], steps: _Steps
                ) -> tuple[dict[str, AttentionStack], list[int]]:
    from ._qk import _Unsupported, bypass_error
    from .capturing import weights_limit
    from .qkweights import QKLayers

    model, info = loaded.model, loaded.info
    n = int(input_ids.shape[1])
    try:
        with _qk_steps(model) as st:
            out = _run_generate(model, input_ids, gen_kwargs, steps,
                                **_full_cache(model))
            gen_ids = [int(t) for t in out.sequences[0, n:].tolist()]
            _last_step(model, out, n + len(gen_ids))
    except _Unsupported:
        raise bypass_error(info["id"], type(model).__name__, weights_limit(info)) from None
    n_layers = int(info.get("layers") or 0)
    total = n + len(gen_ids)
    if not st.q or (n_layers and len(st.q) != n_layers) or st.bias:
        raise bypass_error(info["id"], type(model).__name__, weights_limit(info), bias=st.bias)
    qs, ks, masks = [], [], []
    for i in range(len(st.q)):
        q = np.concatenate(st.q[i], axis=1)  # [head, token, dim]
        k = st.k[i].float().cpu().numpy()
        if q.shape[1] != total or k.shape[1] != total:
            raise AttnmapError(f"layer {i} kept {k.shape[1]} keys for {total} tokens; the "
                               "model's cache drops keys (a sliding-window cache?)")
        m = np.ones((total, total), dtype=bool)
        m[:n, :n] = st.masks[i][0][-n:, :n]
        for s, row in enumerate(st.masks[i][1:]):
            m[n + s, : row.shape[1]] = row[-1]
        qs.append(q)
        ks.append(k)
        masks.append(m)
    masks = _dedupe(masks)
    sinks = None
    if any(s is not None for s in st.sinks):
        sinks = [s if s is not None else np.full(q.shape[0], -np.inf, np.float32)
                 for s, q in zip(st.sinks, qs)]
    layers = QKLayers(qs, ks, st.scaling, masks, softcap=st.softcap, sinks=sinks)
    stack = AttentionStack("self", layers, layers.masks[0], layers.masks)
    layers.masks = stack.layer_masks
    return {"self": stack}, gen_ids


def _generated_tokens(tok: Any, gen_ids: list[int], turn: int | None) -> list[Any]:
    out = []
    for t in make_tokens(tok, gen_ids):
        t = dataclasses.replace(t, generated=True)
        if turn is not None:
            t = dataclasses.replace(t, message=turn, role="assistant", template=t.special)
        out.append(t)
    return out


def _stopped(tok: Any, gen_ids: list[int], model: Any, gen_kwargs: dict[str, Any],
             stops: list[str] | None, max_new_tokens: int, cancelled: bool = False) -> str:
    eos = gen_kwargs.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if gen_ids and gen_ids[-1] in eos_ids:
        return "eos"
    if stops and any(s in tok.decode(gen_ids) for s in stops):
        return "stop"
    if len(gen_ids) >= max_new_tokens:
        return "length"
    return "cancelled" if cancelled else "eos"


def _assemble(loaded: Any, text: str, tokens: list[Any], gen_ids: list[int],
              stacks: dict[str, AttentionStack], steps: _Steps, settings: dict[str, Any],
              messages: list[dict[str, str]] | None, gen_kwargs: dict[str, Any]
              ) -> AttentionRun:
    from .capturing import _facts

    tok, model = loaded.tokenizer, loaded.model
    turn = len(messages) if messages is not None else None
    all_tokens = [*tokens, *_generated_tokens(tok, gen_ids, turn)]
    generated_text = tok.decode(gen_ids, skip_special_tokens=True)
    settings = dict(settings, generated_tokens=len(gen_ids),
                    stopped=_stopped(tok, gen_ids, model, gen_kwargs, settings["stop"],
                                     settings["max_new_tokens"], steps.cancelled))
    extra: dict[str, Any] = {"generation": settings, "generated_text": generated_text}
    if messages is not None:
        extra["messages"] = [*messages, {"role": "assistant", "content": generated_text}]
    extra["predictions"] = steps.records(tok, all_tokens, len(tokens) - 1)
    extra["predictions_kind"] = "generate"
    full_text = text + tok.decode(gen_ids, skip_special_tokens=False)
    return AttentionRun(text=full_text, tokens=all_tokens, stacks=stacks,
                        model=_facts(loaded.info, stacks["self"]), extra=extra)


def _seq2seq(loaded: Any, text: str, tokens: list[Any], input_ids: Any,
             gen_kwargs: dict[str, Any], steps: _Steps, settings: dict[str, Any],
             messages: list[dict[str, str]] | None) -> AttentionRun:
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from .capturing import _layers

    tok, model, info = loaded.tokenizer, loaded.model, loaded.info
    out = _run_generate(model, input_ids, gen_kwargs, steps, output_attentions=True)
    dec_ids = [int(t) for t in out.sequences[0].tolist()]  # the start token, then generated
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=input_ids,
                                  attention_mask=torch.ones_like(input_ids), return_dict=True)
        last = model(encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
                     attention_mask=torch.ones_like(input_ids),
                     decoder_input_ids=out.sequences[:, -1:], use_cache=True,
                     **{_cache_name(model.forward): _cache_of(out)},
                     output_attentions=True, return_dict=True)
    n, m = int(input_ids.shape[1]), len(dec_ids)
    dec_steps = [*out.decoder_attentions, last.decoder_attentions]
    cross_steps = [*out.cross_attentions, last.cross_attentions]
    n_layers = len(dec_steps[0])
    heads = int(dec_steps[0][0].shape[1])
    dec = np.zeros((n_layers, heads, m, m), dtype=np.float32)
    cross = np.zeros((n_layers, heads, m, n), dtype=np.float32)
    with torch.no_grad():
        for s in range(m):
            if int(dec_steps[s][0].shape[-1]) != s + 1:
                raise AttnmapError(f"decoder step {s} attended to "
                                   f"{int(dec_steps[s][0].shape[-1])} keys, not {s + 1}")
            dec[:, :, s, : s + 1] = torch.stack(
                [a[0, :, -1] for a in dec_steps[s]]).float().cpu().numpy()
            cross[:, :, s] = torch.stack(
                [a[0, :, -1] for a in cross_steps[s]]).float().cpu().numpy()
    stacks = {
        "encoder": AttentionStack("encoder", _layers(out.encoder_attentions, info),
                                  np.zeros((n, n), dtype=bool)),
        "decoder": AttentionStack("decoder", list(dec), np.triu(np.ones((m, m), bool), 1)),
        "cross": AttentionStack("cross", list(cross), np.zeros((m, n), dtype=bool)),
    }
    target_tokens = make_tokens(tok, dec_ids)
    target_tokens = [target_tokens[0], *(dataclasses.replace(t, generated=True)
                                         for t in target_tokens[1:])]
    gen_ids = dec_ids[1:]
    generated_text = tok.decode(gen_ids, skip_special_tokens=True)
    settings = dict(settings, generated_tokens=len(gen_ids),
                    stopped=_stopped(tok, gen_ids, model, gen_kwargs, settings["stop"],
                                     settings["max_new_tokens"], steps.cancelled))
    model_info = dict(info)
    model_info["target_generated"] = True
    extra: dict[str, Any] = {"generation": settings, "generated_text": generated_text,
                             "predictions": steps.records(tok, target_tokens, 0),
                             "predictions_kind": "generate"}
    if messages is not None:
        extra["messages"] = messages
    return AttentionRun(text=text, tokens=tokens, stacks=stacks, model=model_info,
                        target_text=generated_text, target_tokens=target_tokens, extra=extra)
