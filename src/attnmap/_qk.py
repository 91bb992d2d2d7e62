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
_FLASH_CPU: Any = None  # torch's fused CPU attention that also returns the log-sum-exp


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
        self.lse: list[np.ndarray | None] = []  # per call: [head, query] float32, or None
        self.bias = False  # a float "mask" that also adds a position bias (T5)
        self._seen: dict[tuple[int, int, tuple[int, ...]], np.ndarray] = {}

    def mask_of(self, module: Any, attention_mask: Any, nq: int, nk: int) -> np.ndarray:
        """The cells this call hid ``[query, key]`` (True = hidden), read by dtype: a bool
        mask hides False, a float mask hides what is pushed to the dtype's minimum."""
        import torch

        if attention_mask is None:
            # what SDPA does with no mask: causal when the module says so
            causal = _causal_without_mask(module, nq, nk)
            key = (0, int(causal), (nq, nk))
            if key not in self._seen:  # query i sees keys up to i + nk - nq
                self._seen[key] = (
                    np.arange(nk)[None, :] > np.arange(nq)[:, None] + (nk - nq) if causal
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


# A block of queries is scored against the keys in one go: its scores ``[block, key]`` (float32)
# stay near this many bytes, so no call holds an n × n matrix (at 32,768 keys: 256 queries).
BLOCK_BYTES = 32 << 20


def _blocks(nq: int, nk: int) -> Iterator[slice]:
    """Query rows in blocks of at most BLOCK_BYTES of float32 scores each."""
    step = max(1, BLOCK_BYTES // (4 * max(nk, 1)))
    for start in range(0, nq, step):
        yield slice(start, min(nq, start + step))


def _mask_rows(attention_mask: Any, rows: slice, nk: int) -> Any:
    """Rows `rows` of a ``[batch, 1|head, query|1, key]`` mask, cut to `nk` keys."""
    if attention_mask.shape[2] == 1:
        return attention_mask[..., :nk]
    return attention_mask[:, :, rows, :nk]


def _visible_keys(mask: Any, causal_end: int | None, nk: int) -> slice:
    """The span of keys that any query of a block may see: keys outside it are hidden for
    every query of the block (a sliding window, the causal future), so they are skipped."""
    import torch

    if mask is None:
        return slice(0, nk if causal_end is None else causal_end)
    seen = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    cols = seen.reshape(-1, seen.shape[-1]).any(dim=0).nonzero()
    if cols.numel() == 0:  # every key hidden: keep them all, as the whole call would
        return slice(0, nk)
    return slice(int(cols[0]), int(cols[-1]) + 1)


def _causal_without_mask(module: Any, nq: int, nk: int) -> bool:
    """What SDPA does when transformers hands it no mask: causal when the module says so
    (transformers drops the mask only where query and key lengths agree)."""
    return nq > 1 and bool(getattr(module, "is_causal", False))


def _eager_default(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                   scaling: float, softcap: float | None, sinks: Any,
                   want_weights: bool) -> tuple[Any, Any]:
    """Plain attention, one head and one block of queries at a time, so the peak stays one
    block of scores; keys no query of a block may see are skipped. For what SDPA cannot do
    (soft-capping, sink logits) and for weights when a model has no eager function."""
    import torch

    rep = query.shape[1] // key.shape[1]
    nq, nk = query.shape[2], key.shape[2]
    causal = attention_mask is None and _causal_without_mask(module, nq, nk)
    out = torch.empty_like(query)  # [batch, head, query, dim]
    weights = (torch.zeros(query.shape[0], query.shape[1], nq, nk,
                           dtype=query.dtype, device=query.device) if want_weights else None)
    for rows in _blocks(nq, nk):
        am = None if attention_mask is None else _mask_rows(attention_mask, rows, nk)
        keys = _visible_keys(am, rows.stop + nk - nq if causal else None, nk)
        if am is not None:
            am = am[:, 0, :, keys]  # [batch, query|1, key]
        elif causal:  # query i sees keys up to i + nk - nq
            qpos = torch.arange(rows.start, rows.stop, device=query.device)[:, None]
            kpos = torch.arange(keys.start, keys.stop, device=query.device)[None, :]
            am = (kpos <= qpos + (nk - nq))[None]
        for h in range(query.shape[1]):
            w = torch.matmul(query[:, h, rows], key[:, h // rep, keys].transpose(-1, -2)).float()
            w.mul_(scaling)  # [batch, query, key]
            if softcap is not None:
                w.div_(softcap).tanh_().mul_(softcap)
            if am is not None:
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
            out[:, h, rows] = torch.matmul(w, value[:, h // rep, keys])
            if weights is not None:
                weights[:, h, rows, keys] = w
    return out.transpose(1, 2).contiguous(), weights


def _fused(query: Any, key: Any, value: Any, mask: Any, causal: bool, scaling: float,
           gqa: bool) -> tuple[Any, Any]:
    """One call of torch's fused attention → ``(output, logsumexp)``. On the CPU the fused
    kernel that SDPA runs also hands back each row's log-sum-exp of the scaled logits
    ``[batch, head, query]`` (the softmax's normaliser), which the run keeps so that a tile
    of a head needs no pass of its own to find it; elsewhere it is None."""
    import torch

    if query.device.type == "cpu" and _FLASH_CPU is not None and query.dtype in (
            torch.float32, torch.bfloat16, torch.float16):
        m = mask
        if m is not None and m.dtype == torch.bool:  # what SDPA does with a bool mask
            m = torch.zeros(m.shape, dtype=query.dtype, device=query.device).masked_fill_(
                ~m, float("-inf"))
        try:
            out, lse = _FLASH_CPU(query, key, value, 0.0, causal, attn_mask=m, scale=scaling)
        except (RuntimeError, TypeError):
            pass  # a shape or option this kernel does not take: plain SDPA below
        else:
            ok = tuple(lse.shape) == tuple(query.shape[:3])
            return out, lse if ok else None
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=gqa)
    return out, None


def _flash_cpu() -> Any:
    import torch

    try:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):
        return None


def _sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
          scaling: float) -> tuple[Any, Any]:
    """The layer's output from torch's fused attention, and each row's log-sum-exp where
    the kernel gives it (see :func:`_fused`). With no mask (causal or not) one call does it
    in memory linear in the length; with a mask (sliding windows, chunks, padding) the
    queries go in blocks, each with only the keys it may see, so neither the mask nor
    SDPA's float copy of it is ever n × n."""
    import torch

    global _FLASH_CPU
    if _FLASH_CPU is None:
        _FLASH_CPU = _flash_cpu()
    gqa = query.shape[1] != key.shape[1]
    nq, nk = query.shape[2], key.shape[2]
    if attention_mask is None:
        out, lse = _fused(query, key, value, None, _causal_without_mask(module, nq, nk),
                          scaling, gqa)
        return out.transpose(1, 2).contiguous(), lse
    mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.to(
        query.dtype)
    out = torch.empty_like(query)  # [batch, head, query, dim]
    lse_all: Any = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
    for rows in _blocks(nq, nk):
        am = _mask_rows(mask, rows, nk)
        keys = _visible_keys(am, None, nk)
        out[:, :, rows], lse = _fused(query[:, :, rows], key[:, :, keys], value[:, :, keys],
                                      am[..., keys], False, scaling, gqa)
        if lse is None:
            lse_all = None
        elif lse_all is not None:
            lse_all[:, :, rows] = lse
    return out.transpose(1, 2).contiguous(), lse_all


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
    lse = None
    if softcap is None and sinks is None:
        out, lse = _sdpa(module, query, key, value, attention_mask, float(scaling))
    else:  # soft-capping or sink logits: SDPA has neither
        out, _ = _eager_default(module, query, key, value, attention_mask, float(scaling),
                                softcap, sinks, False)
    if rec is not None:
        if kwargs.get("position_bias") is not None or kwargs.get("alibi") is not None:
            rec.bias = True  # scores get more than q·k: not reproducible from q and k
        if attention_mask is not None and attention_mask.dtype != torch.bool and not rec.bias:
            low = torch.finfo(attention_mask.dtype).min / 2
            rec.bias = bool(((attention_mask != 0) & (attention_mask > low)).any())
        rec.masks.append(rec.mask_of(module, attention_mask, query.shape[2], key.shape[2]))
        # own contiguous copies where the model's are views (GPT-2 slices q, k and v out
        # of one buffer): the run keeps no values and later reads go row by row
        rec.q.append(np.ascontiguousarray(query[0].detach().float().cpu().numpy()))
        rec.k.append(np.ascontiguousarray(key[0].detach().float().cpu().numpy()))
        rec.scaling.append(float(scaling))
        rec.softcap.append(None if softcap is None else float(softcap))
        rec.sinks.append(None if sinks is None else
                         sinks.detach().float().reshape(-1).cpu().numpy())
        rec.lse.append(None if lse is None else
                       np.ascontiguousarray(lse[0].detach().float().cpu().numpy()))
        # the layer's freed scratch goes back now, not at the end (lowers a long run's peak
        # without fixing glibc's mmap threshold: see fixed_mmap_threshold)
        release_freed_memory()
    return out, None


# --- the allocator --------------------------------------------------------------------------

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc)
GLIBC_MMAP_THRESHOLD = 128 * 1024  # glibc's threshold at start-up
_ALLOC_LOCK = threading.Lock()
_alloc_users = 0  # fixed_mmap_threshold blocks open in this process, all threads together


def _libc() -> Any:
    """glibc, or None (another C library, another system): then there is nothing to tune."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):  # musl, say
        return None
    return libc


def _startup_mmap_threshold() -> int:
    """The threshold this process started with: the environment's, if it set one
    (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…``), else
    glibc's."""
    import os

    value = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        if item.startswith("glibc.malloc.mmap_threshold="):
            value = item.split("=", 1)[1]
    try:
        return int(value) if value is not None else GLIBC_MMAP_THRESHOLD
    except ValueError:
        return GLIBC_MMAP_THRESHOLD


def release_freed_memory() -> None:
    """Hand the blocks freed inside glibc's heaps back to the system (``malloc_trim``): a
    long forward leaves the heaps holding memory that nothing uses any more."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def fixed_mmap_threshold() -> Iterator[None]:
    """Inside, blocks of 1 MiB and up come from mmap, so freeing them gives them back to the
    system at once (generation's thousands of growing caches otherwise stay in the heap).

    The threshold is set when the first block in the process opens and set back, with the
    freed memory released, when the last one closes: nested and concurrent uses (the app
    serves several) never set it back under each other. Set back means to the start-up
    value; glibc has no call that turns its self-adjusting threshold on again once mallopt
    has fixed one, which is why a capture does not use this (it only releases what it
    freed, :func:`release_freed_memory`)."""
    global _alloc_users
    libc = _libc()
    if libc is None:
        yield
        return
    with _ALLOC_LOCK:
        _alloc_users += 1
        if _alloc_users == 1:
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        with _ALLOC_LOCK:
            _alloc_users -= 1
            if _alloc_users == 0:
                libc.malloc_trim(0)
                libc.mallopt(M_MMAP_THRESHOLD, _startup_mmap_threshold())


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
            if self.mode == "qk":  # give back what the forward freed; settings untouched
                stack.callback(release_freed_memory)
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
    kept = [x for x in rec.lse if x is not None]
    lse = kept if rec.lse and len(kept) == len(rec.lse) else None
    return QKLayers(rec.q, rec.k, rec.scaling, masks, softcap=rec.softcap, sinks=sinks,
                    logsumexp=lse)


def bypass_error(model_name: str, cls: str, weights_limit: int, *, bias: bool = False
                 ) -> AttnmapError:
    why = ("adds a position bias to its attention scores (relative positions)" if bias else
           "computes attention outside transformers' attention interface (ALiBi or relative "
           "positions, say)")
    return AttnmapError(
        f"model {model_name!r} ({cls}) {why}, so the long-input mode (store='qk') cannot "
        f"capture it from queries and keys; --store weights works up to {weights_limit:,} tokens"
    )
