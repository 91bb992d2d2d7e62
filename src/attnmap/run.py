"""AttentionRun: the one intermediate every output is made from, and its file format.

File format (version 1), one ``.safetensors`` file:

* self-attention models: tensors ``layer.{i}`` of shape ``[heads, queries, keys]``;
* encoder-decoder models: ``encoder.layer.{i}``, ``decoder.layer.{i}``, ``cross.layer.{i}``;
* masks: ``mask`` (or ``{stack}.mask``), uint8 ``[queries, keys]``, 1 = the query cannot see
  the key (causal upper triangle), so a masked cell is never read as "attention 0"; long runs
  (version 4) keep ``mask.rows`` instead, int32 ``[queries, 2]``: each row's visible keys
  ``first … end - 1`` (the README lists the rest);
* the metadata entry ``attnmap`` holds JSON: ``format_version``, ``model``, ``causal``,
  ``architecture``, ``text``, ``tokens`` (display strings), ``token_info`` (raw, id, special,
  offsets) and, for encoder-decoders, ``target_text``, ``target_tokens``,
  ``target_token_info`` and per stack ``query_tokens``/``key_tokens``.

Loading never executes code: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import AttnmapError
from ._io import atomic_path
from .qkweights import QKLayers, row_spans
from .tokens import Token

# What a notebook displays for a run; set by ``attnmap/__init__.py`` to the viewer's widget.
_display: Callable[[Any], dict[str, Any]] | None = None


def set_display(hook: Callable[[Any], dict[str, Any]] | None) -> None:
    """Choose what ``AttentionRun._repr_mimebundle_`` shows (None: the plain repr)."""
    global _display
    _display = hook

# The newest format this version reads. Version 2 added queries/keys storage for long runs
# and predictions; version 3 per-layer masks (sliding windows, alternating layer types). A run
# that needs none of these is still written as version 1. Version 4 stores the masks of long
# (queries and keys) runs as each row's visible span when every row sees one run of keys.
FORMAT_VERSION = 4
# The most layers and heads per stack a run file may hold. The largest models have ~128 of
# each; a file claiming thousands was made by hand, and drawing it would run for minutes.
MAX_LAYERS = 1024
MAX_HEADS = 1024
STACK_ORDER = ("self", "encoder", "decoder", "cross")
# Which token sequence a stack's queries and keys come from.
STACK_SIDES = {
    "self": ("source", "source"),
    "encoder": ("source", "source"),
    "decoder": ("target", "target"),
    "cross": ("target", "source"),
}


class AttentionStack:
    """All layers of one kind of attention (self, encoder, decoder or cross).

    Each layer has the mask it really used (True where the query cannot see the key): the
    causal future, a sliding window, a chunk … Layers of one model can differ (Gemma's
    alternating local and global layers), so the mask is asked for per layer:
    :meth:`mask`. ``masked`` is the one mask of a stack whose layers all share it.
    """

    def __init__(self, name: str, layers: Sequence[np.ndarray], masked: np.ndarray,
                 layer_masks: Sequence[np.ndarray] | None = None) -> None:
        self.name = name
        # each [head, query, key], float32 (or float16 when stored small); long runs hold a
        # QKLayers that computes each layer from queries and keys when it is read
        self.layers = layers
        shared = np.asarray(masked, dtype=bool)  # [query, key]
        masks: list[np.ndarray] | None = None
        if layer_masks is not None:
            masks = [np.asarray(m, dtype=bool) for m in layer_masks]  # each [query, key]
            if len(masks) != len(layers):
                raise ValueError(f"{len(masks)} layer masks for {len(layers)} layers")
            for m in masks:
                if m.shape != shared.shape:
                    raise ValueError(f"layer mask of shape {m.shape}, expected {shared.shape}")
            if all(m is masks[0] or np.array_equal(m, masks[0]) for m in masks):
                shared, masks = masks[0], None
            else:
                masks = _dedupe(masks)
        self._shared = shared
        self._layer_masks = masks

    @property
    def uniform(self) -> bool:
        """True when every layer uses the same mask."""
        return self._layer_masks is None

    @property
    def masked(self) -> np.ndarray:
        """The mask ``[query, key]`` every layer shares (True = cannot attend)."""
        if self._layer_masks is not None:
            from ._errors import AttnmapError

            raise AttnmapError(
                f"the {self.name} layers use different masks (sliding windows, say); "
                "ask for one layer's: run.mask(layer)"
            )
        return self._shared

    @property
    def layer_masks(self) -> list[np.ndarray]:
        """One mask ``[query, key]`` per layer (layers that share one share the array)."""
        if self._layer_masks is None:
            return [self._shared] * len(self.layers)
        return list(self._layer_masks)

    def mask(self, layer: int) -> np.ndarray:
        """The mask ``[query, key]`` that layer `layer` used (True = cannot attend)."""
        if self._layer_masks is None:
            return self._shared
        return self._layer_masks[layer]

    def masked_anywhere(self) -> np.ndarray:
        """Cells masked in at least one layer ``[query, key]``."""
        if self._layer_masks is None:
            return self._shared
        out = np.zeros_like(self._shared)
        for m in {id(m): m for m in self._layer_masks}.values():
            out |= m
        return out

    def masked_everywhere(self) -> np.ndarray:
        """Cells masked in every layer ``[query, key]`` (a causal model's future)."""
        if self._layer_masks is None:
            return self._shared
        out = np.ones_like(self._shared)
        for m in {id(m): m for m in self._layer_masks}.values():
            out &= m
        return out

    def distinct_masks(self) -> tuple[list[np.ndarray], list[int]]:
        """The distinct masks and, per layer, the index of its mask among them."""
        masks: list[np.ndarray] = []
        index: list[int] = []
        seen: dict[int, int] = {}
        for m in self.layer_masks:
            if id(m) not in seen:
                seen[id(m)] = len(masks)
                masks.append(m)
            index.append(seen[id(m)])
        return masks, index

    def with_masks(self, fn: Any) -> list[np.ndarray] | None:
        """``fn`` applied to each distinct layer mask (None for a uniform stack); layers that
        shared a mask share the result."""
        if self._layer_masks is None:
            return None
        done: dict[int, np.ndarray] = {}
        return [done.setdefault(id(m), fn(m)) for m in self._layer_masks]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.shape[1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h, q, k = getattr(self.layers, "shape", None) or self.layers[0].shape
        return (len(self.layers), int(h), int(q), int(k))

    def rows(self, layer: int, r0: int, r1: int, k0: int = 0, k1: int | None = None, *,
             entropy: bool = False, scratch: Any = None) -> Any:
        """Weights of query rows ``r0:r1`` over keys ``k0:k1`` of one layer ``[head, row, key]``
        float32 (and with `entropy` each row's entropy ``[head, row]``: ``(weights,
        entropy)``); a run stored as queries and keys computes only those rows (the mask must
        hide every other key from them, and `scratch` lends it memory: see
        :meth:`QKLayers.rows`)."""
        if isinstance(self.layers, QKLayers):
            return self.layers.rows(layer, r0, r1, k0, k1, entropy=entropy, scratch=scratch)
        a = np.asarray(self.layers[layer][:, r0:r1, k0:k1], dtype=np.float32)
        if not entropy:
            return a
        k1 = a.shape[2] + k0
        ok = (a > 0) & ~self.mask(layer)[r0:r1, k0:k1]
        logs = np.log(a, where=ok, out=np.zeros(a.shape, dtype=np.float32))
        ent: np.ndarray = -np.einsum("hqk,hqk->hq", a, logs, dtype=np.float64)
        return a, ent

    @property
    def lazy(self) -> bool:
        """True when layers are computed on demand from stored queries and keys."""
        return isinstance(self.layers, QKLayers)

    def __repr__(self) -> str:
        return f"AttentionStack({self.name!r}, shape={self.shape}, uniform_mask={self.uniform})"


def _dedupe(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Equal masks become one array, so memory and files hold each distinct mask once."""
    out: list[np.ndarray] = []
    distinct: list[np.ndarray] = []
    for m in masks:
        same = next((d for d in distinct if d is m or np.array_equal(d, m)), None)
        if same is None:
            distinct.append(m)
            same = m
        out.append(same)
    return out


@dataclass
class AttentionRun:
    """Tokens, attention weights and model facts for one input text."""

    text: str
    tokens: list[Token]  # the input (source) tokens
    stacks: dict[str, AttentionStack]
    model: dict[str, Any]  # id, architecture, model_type, layers, heads, causal, max_length
    target_text: str | None = None
    target_tokens: list[Token] | None = None  # decoder tokens of an encoder-decoder
    extra: dict[str, Any] = field(default_factory=dict)

    # --- shape and facts -------------------------------------------------------------------
    @property
    def primary(self) -> str:
        """The stack shown by default: ``self`` or, for encoder-decoders, ``encoder``."""
        return next(iter(self.stacks))

    def stack(self, name: str | None = None) -> AttentionStack:
        name = name or self.primary
        if name not in self.stacks:
            raise AttnmapError(
                f"this run has no {name!r} attention; it has: {', '.join(self.stacks)} "
                "(pick one with --stack, or stack= in Python)"
            )
        return self.stacks[name]

    @property
    def n_layers(self) -> int:
        return self.stack().n_layers

    @property
    def n_heads(self) -> int:
        return self.stack().n_heads

    @property
    def causal(self) -> bool:
        return bool(self.model.get("causal", False))

    @property
    def predictions(self) -> list[dict[str, Any]] | None:
        """What the model predicted per position (captured with ``predictions=True``)."""
        return self.extra.get("predictions")

    @property
    def attention(self) -> np.ndarray:
        """The default stack as one array ``[layer, head, query, key]``."""
        return np.stack(self.stack().layers)

    @property
    def masked(self) -> np.ndarray:
        """The default stack's mask ``[query, key]`` (True = cannot attend), for runs whose
        layers all share one mask; otherwise ask per layer with :meth:`mask`."""
        return self.stack().masked

    def mask(self, layer: int, stack: str | None = None) -> np.ndarray:
        """The mask ``[query, key]`` that `layer` used (True = the query cannot see the key):
        the causal future, a sliding window, a chunk, or nothing."""
        return self.stack(stack).mask(self.layer_index(layer, stack))

    def query_tokens(self, stack: str | None = None) -> list[Token]:
        return self._side(STACK_SIDES[self.stack(stack).name][0])

    def key_tokens(self, stack: str | None = None) -> list[Token]:
        return self._side(STACK_SIDES[self.stack(stack).name][1])

    def _side(self, side: str) -> list[Token]:
        if side == "target":
            return self.target_tokens or []
        return self.tokens

    # --- indexing --------------------------------------------------------------------------
    def layer_index(self, layer: int, stack: str | None = None) -> int:
        return _index(layer, self.stack(stack).n_layers, "layer")

    def head_index(self, head: int, stack: str | None = None) -> int:
        return _index(head, self.stack(stack).n_heads, "head")

    def layer(self, layer: int, stack: str | None = None) -> np.ndarray:
        """One layer's weights ``[head, query, key]`` as float32."""
        st = self.stack(stack)
        return np.asarray(st.layers[self.layer_index(layer, stack)], dtype=np.float32)

    def head(self, layer: int, head: int, stack: str | None = None) -> np.ndarray:
        """One head's matrix ``[query, key]`` as float32."""
        h = self.head_index(head, stack)
        m: np.ndarray = self.layer(layer, stack)[h]  # [query, key]
        return m

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.shape}" for k, v in self.stacks.items())
        return (
            f"AttentionRun(model={self.model.get('id')!r}, tokens={len(self.tokens)}, {shapes})"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook a run shows itself in the interactive viewer (wired by the package:
        the viewer sits above this module, so the run only calls what it was given)."""
        if _display is None:
            return {"text/plain": repr(self)}
        try:
            return dict(_display(self))
        except (ImportError, AttnmapError):  # the widget extra is not installed
            return {"text/plain": repr(self)}

    # --- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, dtype: str = "float32") -> Path:
        """Write the run as one ``.safetensors`` file (replaced only once complete)."""
        from safetensors.numpy import save_file

        if dtype not in ("float32", "float16"):
            raise AttnmapError(f"dtype must be float32 or float16 (not {dtype!r})")
        tensors: dict[str, np.ndarray] = {}
        stacks_meta: dict[str, Any] = {}
        version = 1
        for name, st in self.stacks.items():
            prefix = "" if name == "self" else f"{name}."
            if isinstance(st.layers, QKLayers):
                version = 2
                for i in range(st.n_layers):
                    tensors[f"{prefix}q.layer.{i}"] = np.ascontiguousarray(st.layers.q[i], dtype)
                    tensors[f"{prefix}k.layer.{i}"] = np.ascontiguousarray(st.layers.k[i], dtype)
                    if st.layers.sinks is not None:
                        tensors[f"{prefix}sinks.layer.{i}"] = np.ascontiguousarray(
                            st.layers.sinks[i], np.float32)
                    if st.layers.logsumexp is not None and dtype == "float32":
                        # normalisers of float32 q/k only: rounded q/k would not sum to 1
                        tensors[f"{prefix}lse.layer.{i}"] = np.ascontiguousarray(
                            st.layers.logsumexp[i], np.float32)
            else:
                for i, arr in enumerate(st.layers):
                    tensors[f"{prefix}layer.{i}"] = np.ascontiguousarray(arr, dtype=dtype)
            mask_index = None
            spans = isinstance(st.layers, QKLayers)  # long runs: the mask is most of the file
            if st.uniform:
                version = max(version, _put_mask(tensors, f"{prefix}mask", st.masked, spans))
            else:
                version = max(version, 3)
                masks, mask_index = st.distinct_masks()
                for j, m in enumerate(masks):
                    version = max(version, _put_mask(tensors, f"{prefix}mask.{j}", m, spans))
            q_side, k_side = STACK_SIDES[name]
            stacks_meta[name] = {
                "layer_masks": mask_index,
                "storage": "qk" if isinstance(st.layers, QKLayers) else "weights",
                "scaling": list(st.layers.scaling) if isinstance(st.layers, QKLayers) else None,
                "softcap": st.layers.softcap if isinstance(st.layers, QKLayers) else None,
                "sinks": isinstance(st.layers, QKLayers) and st.layers.sinks is not None,
                "layers": st.n_layers,
                "heads": st.n_heads,
                "query": q_side,
                "key": k_side,
                "query_tokens": [t.text for t in self._side(q_side)],
                "key_tokens": [t.text for t in self._side(k_side)],
            }
        if "predictions" in self.extra:
            version = max(version, 2)  # predictions came with format 2
        for name, arr in self.extra_tensors().items():
            tensors[name] = np.ascontiguousarray(arr)
        meta: dict[str, Any] = {
            "format_version": version,
            "model": self.model.get("id"),
            "model_info": self.model,
            "causal": self.causal,
            "architecture": self.model.get("architecture"),
            "text": self.text,
            "tokens": [t.text for t in self.tokens],
            "token_info": [t.to_dict() for t in self.tokens],
            "stacks": stacks_meta,
            "extra": {k: v for k, v in self.extra.items() if not isinstance(v, np.ndarray)},
        }
        if self.target_tokens is not None:
            meta["target_text"] = self.target_text
            meta["target_tokens"] = [t.text for t in self.target_tokens]
            meta["target_token_info"] = [t.to_dict() for t in self.target_tokens]
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"attnmap": json.dumps(meta)})
        return Path(path)

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Optional arrays carried in ``extra`` (saved as ``extra.{name}``)."""
        return {f"extra.{k}": v for k, v in self.extra.items() if isinstance(v, np.ndarray)}


def _index(i: int, n: int, what: str) -> int:
    if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
        raise AttnmapError(f"{what} must be an integer in 0..{n - 1} (not {i!r})")
    if -n <= i < n:
        return int(i) % n
    raise AttnmapError(
        f"{what} must be in 0..{n - 1} or -{n}..-1 counting from the end (not {i!r})"
    )


def load(path: str | os.PathLike[str]) -> AttentionRun:
    """Read a run written by :meth:`AttentionRun.save`. Refuses anything else with a clear error.

    A run file can come from anyone: every part is checked (types, shapes, counts, limits)
    before it is used, and any problem is one :class:`AttnmapError` line.
    """
    from safetensors import safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise AttnmapError(f"run file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="numpy") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
            raw_meta = header.get("attnmap")
            if raw_meta is None:
                raise AttnmapError(
                    f"{str(p)!r} is a safetensors file but not an attnmap run "
                    "(no 'attnmap' metadata); make one with `attnmap capture`"
                )
            meta = json.loads(raw_meta)
            if not isinstance(meta, dict):
                raise ValueError(f"its metadata is a JSON {type(meta).__name__}, not an object")
            version = meta.get("format_version", 0)
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"format_version must be an integer (not {version!r:.40})")
            if version > FORMAT_VERSION:
                raise AttnmapError(
                    f"{str(p)!r} uses run format {version}, newer than this attnmap reads "
                    f"({FORMAT_VERSION}); upgrade attnmap"
                )
            tensors = {k: f.get_tensor(k) for k in keys}
    except AttnmapError:
        raise
    except Exception as exc:  # safetensors raises several types for a bad header
        raise AttnmapError(
            f"{str(p)!r} is not a readable attnmap run file ({type(exc).__name__}: "
            f"{_first_line(exc) or 'bad header'}); re-create it with "
            "`attnmap capture`"
        ) from exc
    try:
        _check_meta(meta)
        return _from_parts(meta, tensors)
    except _TooLarge as exc:
        raise AttnmapError(f"{str(p)!r}: {exc}") from None
    except AttnmapError:
        raise
    except Exception as exc:  # noqa: BLE001 — a hand-made file must never give a traceback
        raise AttnmapError(
            f"{str(p)!r} is an attnmap run file with missing or inconsistent parts "
            f"({_first_line(exc) or type(exc).__name__}); re-create it with `attnmap capture`"
        ) from exc


class _TooLarge(ValueError):
    """A run file bigger than any real model makes (its message names the limit)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= 200 else text[:200] + "…"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _check_text(value: Any, where: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string (not {type(value).__name__})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} holds an unpaired surrogate (\\u{ord(value[exc.start]):04x}) "
                         f"at position {exc.start}, which is not text") from None


def _check_strings(obj: Any, where: str) -> None:
    """Every string anywhere in `obj` (keys too) must be valid Unicode (no lone surrogates)."""
    stack = [(obj, where)]
    while stack:
        o, w = stack.pop()
        if isinstance(o, str):
            _check_text(o, w)
        elif isinstance(o, dict):
            for k, v in o.items():
                _check_text(k, f"a key in {w}")
                stack.append((v, f"{w}.{k}"))
        elif isinstance(o, list):
            stack.extend((v, f"{w}[{i}]") for i, v in enumerate(o))


_TOKEN_FIELDS = {
    "text": (str, False), "raw": (str, False), "id": (int, False), "special": (bool, True),
    "start": (int, True), "end": (int, True), "message": (int, True), "role": (str, True),
    "template": (bool, True), "generated": (bool, True), "row": (int, True),
    "col": (int, True), "kind": (str, True),
}


def _check_tokens(info: Any, where: str) -> None:
    if not isinstance(info, list):
        raise ValueError(f"{where} must be a list (not {type(info).__name__})")
    for i, d in enumerate(info):
        if not isinstance(d, dict):
            raise ValueError(f"{where}[{i}] must be an object (not {type(d).__name__})")
        for name, (kind, optional) in _TOKEN_FIELDS.items():
            v = d.get(name)
            if v is None and optional:
                continue
            if not (_is_int(v) if kind is int else isinstance(v, kind)):
                what = "an integer" if kind is int else f"a {kind.__name__}"
                raise ValueError(f"{where}[{i}].{name} must be {what} (not {v!r:.40})")
        box = d.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4
                                or not all(_is_int(x) for x in box)):
            raise ValueError(f"{where}[{i}].box must be 4 integers x0, y0, x1, y1 "
                             f"(not {box!r:.40})")


def _check_meta(meta: dict[str, Any]) -> None:
    """Types of everything in the JSON metadata the loader and the outputs read."""
    _check_strings(meta, "metadata")
    _check_text(meta.get("text"), "text")
    _check_tokens(meta.get("token_info"), "token_info")
    if not meta["token_info"]:
        raise ValueError("the run has no tokens")
    if meta.get("target_token_info") is not None:
        _check_tokens(meta["target_token_info"], "target_token_info")
        _check_text(meta.get("target_text"), "target_text", optional=True)
    for name in ("stacks", "extra", "model_info"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise ValueError(f"{name} must be an object (not {type(meta[name]).__name__})")
    for name, smeta in (meta.get("stacks") or {}).items():
        if not isinstance(smeta, dict):
            raise ValueError(f"stacks.{name} must be an object")
        index = smeta.get("layer_masks")
        if index is not None and (not isinstance(index, list)
                                  or not all(_is_int(j) and j >= 0 for j in index)):
            raise ValueError(f"stacks.{name}.layer_masks must be a list of mask numbers")
        scaling = smeta.get("scaling")
        if scaling is not None and (not isinstance(scaling, list)
                                    or not all(_is_number(x) for x in scaling)):
            raise ValueError(f"stacks.{name}.scaling must be a list of finite numbers "
                             f"(not {scaling!r:.40})")
    preds = (meta.get("extra") or {}).get("predictions")
    if preds is not None:
        check_predictions(preds)
    image = (meta.get("extra") or {}).get("image")
    if image is not None:
        from .patches import check_image_meta

        check_image_meta(image, meta["token_info"])


def check_predictions(preds: Any) -> None:
    """Raise ValueError unless `preds` has the shape :mod:`attnmap.predict` writes."""
    def number(v: Any, where: str) -> None:
        if not _is_number(v):
            raise ValueError(f"predictions: {where} must be a finite number (not {v!r:.40})")

    def text(v: Any, where: str) -> None:
        if not isinstance(v, str):
            raise ValueError(f"predictions: {where} must be a string (not {v!r:.40})")

    if not isinstance(preds, list):
        raise ValueError(f"predictions must be a list (not {type(preds).__name__})")
    for i, r in enumerate(preds):
        at = f"record {i}"
        if not isinstance(r, dict):
            raise ValueError(f"predictions: {at} must be an object (not {r!r:.40})")
        if not _is_int(r.get("position")) or r["position"] < 0:
            raise ValueError(f"predictions: {at}'s position must be an integer ≥ 0 "
                             f"(not {r.get('position')!r:.40})")
        text(r.get("token"), f"{at}'s token")
        top = r.get("top")
        if not isinstance(top, list) or not top:
            raise ValueError(f"predictions: {at}'s top must be a non-empty list")
        for j, t in enumerate(top):
            if not isinstance(t, dict):
                raise ValueError(f"predictions: {at}'s top[{j}] must be an object")
            text(t.get("token"), f"{at}'s top[{j}].token")
            number(t.get("p"), f"{at}'s top[{j}].p")
        nxt = r.get("next")
        if nxt is not None:
            if not isinstance(nxt, dict):
                raise ValueError(f"predictions: {at}'s next must be an object or null")
            text(nxt.get("token"), f"{at}'s next.token")
            number(nxt.get("p"), f"{at}'s next.p")
            if not _is_int(nxt.get("rank")) or nxt["rank"] < 1:
                raise ValueError(f"predictions: {at}'s next.rank must be an integer ≥ 1")
            if nxt.get("surprisal") is not None:
                number(nxt["surprisal"], f"{at}'s next.surprisal")


def _check_size(name: str, n_layers: int, n_heads: int) -> None:
    if n_layers > MAX_LAYERS:
        raise _TooLarge(f"the {name} attention has {n_layers:,} layers, more than attnmap reads "
                        f"(at most {MAX_LAYERS:,}); no real model has that many — was the file "
                        "made by hand?")
    if n_heads > MAX_HEADS:
        raise _TooLarge(f"the {name} attention has {n_heads:,} heads per layer, more than "
                        f"attnmap reads (at most {MAX_HEADS:,}); no real model has that many — "
                        "was the file made by hand?")
    if n_heads < 1:
        raise ValueError(f"the {name} attention has 0 heads")


def _check_float(arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind != "f":
        raise ValueError(f"{what} must hold floats (not {arr.dtype})")


def _numbered(tensors: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    while f"{prefix}{len(out)}" in tensors:
        out.append(tensors[f"{prefix}{len(out)}"])
    return out


def _put_mask(tensors: dict[str, np.ndarray], name: str, mask: np.ndarray,
              spans: bool) -> int:
    """Store a mask under `name`: as each row's visible span ``name.rows`` int32
    ``[query, 2]`` (first key, one past the last) when `spans` and every row sees one run of
    keys (causal, sliding window: 8 bytes per query instead of one per cell; format 4), else
    as uint8 ``[query, key]``. Returns the format version it needs."""
    if spans and mask.size:
        first, end, whole = row_spans(mask)
        if whole.all():
            tensors[f"{name}.rows"] = np.stack([first, end], axis=1).astype(np.int32)
            return 4
    tensors[name] = np.ascontiguousarray(mask, dtype=np.uint8)
    return 1


def _read_masks(tensors: dict[str, np.ndarray], names: list[str], nq: int, nk: int,
                spans: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
                ) -> list[np.ndarray]:
    """The masks stored under `names` (uint8 ``[query, key]`` or row spans ``name.rows``)
    as bool ``[query, key]``, True = hidden; a mask that does not fit nq × nk is refused.
    Spans read go into `spans` by the mask's ``id``."""
    out = []
    for name in names:
        if name in tensors:
            m = tensors[name]
            if m.shape != (nq, nk):
                raise ValueError(f"{name} of shape {m.shape} does not fit {nq}×{nk} tokens")
            out.append(m.astype(bool))
            continue
        rows = tensors[f"{name}.rows"]
        if rows.shape != (nq, 2) or rows.dtype.kind not in "iu":
            raise ValueError(f"{name}.rows must be integers [{nq}, 2], a span per query (not "
                             f"{rows.dtype} {list(rows.shape)})")
        first, end = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        if nq and (first.min() < 0 or (end < first).any() or end.max() > nk):
            raise ValueError(f"{name}.rows must hold spans 0 ≤ first ≤ end ≤ {nk}")
        m = np.empty((nq, nk), dtype=bool)
        cols = np.arange(nk)
        step = max(1, (1 << 22) // max(nk, 1))  # a block of rows at a time: no n² temporaries
        for r0 in range(0, nq, step):
            np.logical_or(cols < first[r0:r0 + step, None], cols >= end[r0:r0 + step, None],
                          out=m[r0:r0 + step])
        if spans is not None:
            spans[id(m)] = (np.where(end > first, first, 0), np.where(end > first, end, 0))
        out.append(m)
    return out


def _mask_names(tensors: dict[str, np.ndarray], prefix: str) -> list[str]:
    """``{prefix}0``, ``{prefix}1``, … as far as the file holds them in either form."""
    out: list[str] = []
    while any(f"{prefix}{len(out)}{tail}" in tensors for tail in ("", ".rows")):
        out.append(f"{prefix}{len(out)}")
    return out


def _from_parts(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> AttentionRun:
    tokens = [Token.from_dict(d) for d in meta["token_info"]]
    target = meta.get("target_token_info")
    target_tokens = [Token.from_dict(d) for d in target] if target is not None else None
    stacks: dict[str, AttentionStack] = {}
    for name in STACK_ORDER:
        prefix = "" if name == "self" else f"{name}."
        layers = _numbered(tensors, f"{prefix}layer.")
        qs, ks = _numbered(tensors, f"{prefix}q.layer."), _numbered(tensors, f"{prefix}k.layer.")
        if not layers and not qs:
            continue
        q_side, k_side = STACK_SIDES[name]
        nq = len(target_tokens or []) if q_side == "target" else len(tokens)
        nk = len(target_tokens or []) if k_side == "target" else len(tokens)
        n_layers = len(qs) or len(layers)
        if nq < 1 or nk < 1:
            raise ValueError(f"the {name} attention has no {'query' if nq < 1 else 'key'} tokens")
        smeta = (meta.get("stacks") or {}).get(name) or {}
        if n_layers > MAX_LAYERS:
            _check_size(name, n_layers, 1)
        spans: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # masks read as row spans
        index = smeta.get("layer_masks")
        if index is None:
            if f"{prefix}mask" not in tensors and f"{prefix}mask.rows" not in tensors:
                raise KeyError(f"{prefix}mask")
            mask = _read_masks(tensors, [f"{prefix}mask"], nq, nk, spans)[0]
            layer_masks = None
        else:
            names = _mask_names(tensors, f"{prefix}mask.")
            if len(index) != n_layers or not names:
                raise ValueError(f"{name}: {len(index)} layer masks for {n_layers} layers")
            distinct = _read_masks(tensors, names, nq, nk, spans)
            if any(j >= len(distinct) for j in index):
                raise ValueError(f"{name}: a layer names a mask the file does not hold")
            layer_masks = [distinct[int(j)] for j in index]
            mask = layer_masks[0]
        for m in [mask, *(layer_masks or [])]:
            if m.shape != (nq, nk):
                raise ValueError(f"{name} mask of shape {m.shape} does not fit {nq}×{nk} tokens")
        if qs:
            scaling = meta["stacks"][name]["scaling"]
            if len(qs) != len(ks) or len(scaling) != len(qs):
                raise ValueError(f"{name}: queries, keys and scalings differ in number")
            for q, k in zip(qs, ks):
                _check_float(q, f"{name} queries")
                _check_float(k, f"{name} keys")
                if q.ndim != 3 or k.ndim != 3:
                    raise ValueError(f"{name}: queries {q.shape} / keys {k.shape} do not fit")
                if q.shape[1] != nq or k.shape[1] != nk:
                    raise ValueError(
                        f"{name}: queries for {q.shape[1]} and keys for {k.shape[1]} positions, "
                        f"but the run has {nq} query and {nk} key tokens")
                if k.shape[0] < 1:
                    raise ValueError(f"{name}: the keys have 0 heads")
                if q.shape[0] % k.shape[0] or q.shape[2] != k.shape[2] or (
                        q.shape[0] != qs[0].shape[0]):
                    raise ValueError(f"{name}: queries {q.shape} / keys {k.shape} do not fit")
            _check_size(name, n_layers, qs[0].shape[0])
            sinks = _numbered(tensors, f"{prefix}sinks.layer.") or None
            if sinks is not None and (len(sinks) != len(qs) or any(
                    s.shape != (qs[0].shape[0],) or s.dtype.kind != "f" for s in sinks)):
                raise ValueError(f"{name}: sinks must be one float per head and layer")
            lse = _numbered(tensors, f"{prefix}lse.layer.") or None
            if lse is not None and (len(lse) != len(qs) or any(
                    x.shape != q.shape[:2] or x.dtype != np.float32 for x, q in zip(lse, qs))):
                raise ValueError(f"{name}: the log-sum-exp must be one float32 per layer, head "
                                 "and query")
            softcap = smeta.get("softcap")
            if softcap is not None and (not isinstance(softcap, list) or len(softcap) != len(qs)
                                        or any(c is not None and not (_is_number(c) and c > 0)
                                               for c in softcap)):
                raise ValueError(f"{name}: softcap must be a positive number or null per layer")
            qk = QKLayers(qs, ks, [float(x) for x in scaling], layer_masks or [mask] * len(qs),
                          softcap=softcap, sinks=sinks, logsumexp=lse)
            for m in {id(m): m for m in qk.masks}.values():
                if id(m) in spans:
                    qk.give_spans(m, *spans[id(m)])
            stacks[name] = AttentionStack(name, qk, mask, layer_masks)
            continue
        for arr in layers:
            _check_float(arr, f"{name} layers")
            if arr.ndim != 3 or arr.shape[1:] != (nq, nk) or arr.shape[0] != layers[0].shape[0]:
                raise ValueError(f"{name} layer of shape {arr.shape} does not fit {nq}×{nk} tokens")
        _check_size(name, n_layers, layers[0].shape[0])
        stacks[name] = AttentionStack(name, layers, mask, layer_masks)
    if not stacks:
        raise ValueError("no attention tensors")
    extra: dict[str, Any] = dict(meta.get("extra") or {})
    for key, value in tensors.items():
        if key.startswith("extra."):
            extra[key[len("extra.") :]] = value
    if "image_png" in extra:
        from .patches import check_thumbnail

        check_thumbnail(extra["image_png"])
    return AttentionRun(
        text=meta["text"],
        tokens=tokens,
        stacks=stacks,
        model=dict(meta.get("model_info") or {"id": meta.get("model"), "causal": meta["causal"]}),
        target_text=meta.get("target_text"),
        target_tokens=target_tokens,
        extra=extra,
    )
