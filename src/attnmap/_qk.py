"""Record what each attention layer really did: its mask and, for long inputs, its queries and keys.

transformers builds the right mask for every layer (causal, sliding window, chunked, local,
bidirectional) and hands it to the attention function together with the layer's options
(scaling, soft-capping, sink logits). attnmap registers two attention functions through
transformers' ``AttentionInterface`` and reads all of that from the call itself instead of
re-deriving it from the config:

* ``attnmap_eager`` records the mask each layer used and then runs the model's own eager
  attention, so the weights are exactly what ``output_attentions`` returns;
* ``attnmap_qk`` (long inputs) records queries (after rotary embeddings), keys (before
  grouped keys are repeated), the mask and the options, computes the layer's output without
  keeping the weights, and returns none. A layer's weights are computed from queries and keys
  when they are read (:class:`attnmap.qkweights.QKLayers`): at 4,096 tokens a 12 × 12 model
  has 2.4 billion weights (9.7 GB as float32), its queries and keys 0.15 GB.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from ._errors import AttnmapError
from .qkweights import QKLayers

EAGER_IMPL = "attnmap_eager"
QK_IMPL = "attnmap_qk"
_STATE = threading.local()
_registered: set[str] = set()  # attention functions made known to transformers


# --- recording ------------------------------------------------------------------------------

class _Recording:
    """What one forward pass left behind, call by call."""

    def __init__(self, mode: str) -> None:
        self.mode = mode  # "eager" (weights come back) or "qk"
        self.masks: list[np.ndarray | None] = []  # per call: [query, key] bool, None = none
        self.q: list[np.ndarray] = []
        self.k: list[np.ndarray] = []
        self.scaling: list[float] = []
        self.softcap: list[float | None] = []
        self.sinks: list[np.ndarray | None] = []
        self.bias = False  # a float "mask" that also adds a position bias (T5)
        self._seen: dict[tuple[int, int, tuple[int, ...]], np.ndarray] = {}

    def mask_of(self, module: Any, attention_mask: Any, nq: int, nk: int) -> np.ndarray:
        """The cells this call hid ``[query, key]`` (True = hidden), read by dtype: a bool
        mask hides False, a float mask hides what is pushed to the dtype's minimum."""
        import torch

        if attention_mask is None:
            # what SDPA does with no mask: causal when the module says so
            causal = nq > 1 and bool(getattr(module, "is_causal", False))
            key = (0, int(causal), (nq, nk))
            if key not in self._seen:
                self._seen[key] = (np.triu(np.ones((nq, nk), bool), 1 + nk - nq) if causal
                                   else np.zeros((nq, nk), bool))
            return self._seen[key]
        m = attention_mask
        key = (id(m), m.data_ptr() if hasattr(m, "data_ptr") else 0, (nq, nk))
        if key in self._seen:
            return self._seen[key]
        m = m[0, 0] if m.dim() == 4 else m[0] if m.dim() == 3 else m
        m = m[-nq:, :nk]
        if m.dtype == torch.bool:
            hidden = ~m
        else:
            hidden = m <= torch.finfo(m.dtype).min / 2  # -inf or the dtype's minimum
        out = hidden.cpu().numpy().astype(bool, copy=False)
        self._seen[key] = out
        return out


def _eager_default(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                   scaling: float, softcap: float | None, sinks: Any,
                   want_weights: bool) -> tuple[Any, Any]:
    """Plain attention, one head at a time so the peak stays one ``[query, key]`` matrix."""
    import torch

    rep = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)  # [batch, head, query, dim]
    weights = (torch.empty(query.shape[0], query.shape[1], query.shape[2], key.shape[2],
                           dtype=query.dtype, device=query.device) if want_weights else None)
    for h in range(query.shape[1]):
        w = torch.matmul(query[:, h], key[:, h // rep].transpose(-1, -2)).float()
        w.mul_(scaling)  # [batch, query, key]
        if softcap is not None:
            w.div_(softcap).tanh_().mul_(softcap)
        if attention_mask is not None:
            am = attention_mask[:, 0, :, : w.shape[-1]]
            if am.dtype == torch.bool:
                w.masked_fill_(~am, float("-inf"))
            else:
                w.add_(am.float())
        if sinks is not None:
            sink = sinks[h].float().reshape(1, 1, 1).expand(w.shape[0], w.shape[1], 1)
            w = torch.softmax(torch.cat([w, sink], dim=-1), dim=-1)[..., :-1]
        else:
            w = torch.softmax(w, dim=-1)
        w = w.to(value.dtype)
        out[:, h] = torch.matmul(w, value[:, h // rep])
        if weights is not None:
            weights[:, h] = w
    return out.transpose(1, 2).contiguous(), weights


def _own_eager(module: Any) -> Any:
    """The eager attention function of the module's own modelling file, if it has one."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _eager_record(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  *args: Any, **kwargs: Any) -> Any:
    rec: _Recording | None = getattr(_STATE, "record", None)
    if rec is not None:
        rec.masks.append(rec.mask_of(module, attention_mask, query.shape[2], key.shape[2]))
    own = _own_eager(module)
    if own is not None:
        return own(module, query, key, value, attention_mask, *args, **kwargs)
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    return _eager_default(module, query, key, value, attention_mask, float(scaling),
                          kwargs.get("softcap"), getattr(module, "sinks", None), True)


def _qk_record(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
               scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> Any:
    import torch

    rec: _Recording | None = getattr(_STATE, "record", None)
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    if softcap is None and sinks is None:
        mask = attention_mask
        is_causal = False
        if mask is None:
            is_causal = query.shape[2] > 1 and bool(getattr(module, "is_causal", False))
        elif mask.dtype != torch.bool:
            mask = mask.to(query.dtype)
        else:
            mask = mask[:, :, :, : key.shape[2]]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=is_causal, scale=float(scaling),
            enable_gqa=query.shape[1] != key.shape[1])
        out = out.transpose(1, 2).contiguous()
    else:
        out, _ = _eager_default(module, query, key, value, attention_mask, float(scaling),
                                softcap, sinks, False)
    if rec is not None:
        if kwargs.get("position_bias") is not None or kwargs.get("alibi") is not None:
            rec.bias = True  # scores get more than q·k: not reproducible from q and k
        if attention_mask is not None and attention_mask.dtype != torch.bool and not rec.bias:
            low = torch.finfo(attention_mask.dtype).min / 2
            rec.bias = bool(((attention_mask != 0) & (attention_mask > low)).any())
        rec.masks.append(rec.mask_of(module, attention_mask, query.shape[2], key.shape[2]))
        rec.q.append(query[0].detach().float().cpu().numpy())
        rec.k.append(key[0].detach().float().cpu().numpy())
        rec.scaling.append(float(scaling))
        rec.softcap.append(None if softcap is None else float(softcap))
        rec.sinks.append(None if sinks is None else
                         sinks.detach().float().reshape(-1).cpu().numpy())
    return out, None


def _release_freed_memory(setup: bool) -> None:
    """glibc keeps freed blocks of a few MB in its heaps, so a long forward leaves the process
    holding gigabytes it no longer uses. Serving big blocks from mmap (returned to the system
    on free) during the forward, and trimming afterwards, keeps the peak near what is live;
    the default threshold is restored after."""
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
            libc.mallopt(-3, 128 * 1024)  # glibc's default threshold
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to tune
        pass


def register_attention(name: str, fn: Any, mask: Any) -> None:
    """Make attention function `fn` (with mask builder `mask`) known to transformers as
    `name`, once per process."""
    if name in _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask)
    _registered.add(name)


def register() -> None:
    """Make both recording attention functions known to transformers (once)."""
    from transformers.masking_utils import eager_mask, sdpa_mask

    register_attention(EAGER_IMPL, _eager_record, eager_mask)
    register_attention(QK_IMPL, _qk_record, sdpa_mask)


@contextmanager
def attention_function(model: Any, name: str) -> Iterator[None]:
    """Run `model` with the registered attention function `name`; the model's own setting is
    restored afterwards, whatever happens. A model that computes attention its own way (or
    refuses the switch) raises ``_Unsupported``."""
    before = getattr(model.config, "_attn_implementation", None)
    can = getattr(model, "_can_set_attn_implementation", None)
    if can is not None and not can():
        raise _Unsupported(f"{type(model).__name__} computes attention its own way")
    try:
        model.set_attn_implementation(name)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise _Unsupported(str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                           ) from exc
    try:
        yield
    finally:
        if before is not None:
            model.set_attn_implementation(before)


@contextmanager
def fixed_mmap_threshold() -> Iterator[None]:
    """Freed big buffers go back to the system while inside (see _release_freed_memory)."""
    _release_freed_memory(setup=True)
    try:
        yield
    finally:
        _release_freed_memory(setup=False)


class recording:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Run `model` with one of attnmap's attention functions and collect what each call did.

    ``with recording(model, "eager") as rec: model(...)`` — afterwards ``rec.masks`` holds the
    mask of every attention call in order (and, in ``"qk"`` mode, queries, keys …). The
    model's own attention setting is restored, whatever happens.
    """

    def __init__(self, model: Any, mode: str) -> None:
        self.model = model
        self.mode = mode
        self.rec = _Recording(mode)

    def __enter__(self) -> _Recording:
        register()
        with ExitStack() as stack:
            if self.mode == "qk":
                stack.enter_context(fixed_mmap_threshold())
            stack.enter_context(attention_function(
                self.model, EAGER_IMPL if self.mode == "eager" else QK_IMPL))
            _STATE.record = self.rec
            stack.callback(setattr, _STATE, "record", None)
            self._exit = stack.pop_all()
        return self.rec

    def __exit__(self, *exc: Any) -> None:
        self._exit.close()


class _Unsupported(Exception):
    """The model cannot switch to attnmap's attention functions."""


def qk_layers(rec: _Recording) -> QKLayers:
    """The recorded queries and keys as lazily computed layers."""
    sinks: list[np.ndarray] | None = None
    if any(s is not None for s in rec.sinks):
        sinks = [s if s is not None else np.full(q.shape[0], -np.inf, np.float32)
                 for s, q in zip(rec.sinks, rec.q)]
    masks = [m if m is not None else np.zeros((q.shape[1], k.shape[1]), bool)
             for m, q, k in zip(rec.masks, rec.q, rec.k)]
    return QKLayers(rec.q, rec.k, rec.scaling, masks, softcap=rec.softcap, sinks=sinks)


def bypass_error(model_name: str, cls: str, weights_limit: int, *, bias: bool = False
                 ) -> AttnmapError:
    why = ("adds a position bias to its attention scores (relative positions)" if bias else
           "computes attention outside transformers' attention interface (ALiBi or relative "
           "positions, say)")
    return AttnmapError(
        f"model {model_name!r} ({cls}) {why}, so the long-input mode (store='qk') cannot "
        f"capture it from queries and keys; --store weights works up to {weights_limit:,} tokens"
    )
