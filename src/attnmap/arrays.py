"""Attention from anywhere becomes a run: :func:`from_arrays`.

Weights computed by another framework — a TransformerLens cache (``cache["pattern", l]``),
nnsight, JAX, plain numpy — plus the tokens they were computed over are all an
:class:`~attnmap.run.AttentionRun` needs; every output (heatmaps, page, app, widget, head
scores) then works on them as on a captured run.

numpy only: torch and JAX arrays come in through ``np.asarray`` (or ``.detach()`` for torch),
so nothing here imports a framework.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._errors import AttnmapError
from .run import AttentionRun, AttentionStack
from .tokens import Token, _byte_decoder, display_text, visible

ROW_TOLERANCE = 1e-3  # a row may sum to at most 1 + this over the keys it can see
# Half-precision weights were rounded after the softmax, so their rows may sum to 1 plus up
# to about one machine epsilon of their format: the tolerance grows to it.
_EPS = {"bfloat16": 2.0**-7, "float16": 2.0**-10, "float8_e4m3fn": 2.0**-3,
        "float8_e4m3fnuz": 2.0**-3, "float8_e5m2": 2.0**-2, "float8_e5m2fnuz": 2.0**-2}
MASKED_TOLERANCE = 1e-6  # a masked cell may hold at most this much attention
NEGATIVE_TOLERANCE = 1e-6  # rounding noise below zero that is not an error

# Special tokens written as strings: <|endoftext|>, <s>, </s>, <pad>, [CLS], [SEP] …
# (SentencePiece byte pieces such as <0x0A> start with a digit, so they are not caught.)
_SPECIAL = re.compile(r"^(<\|[^|<>\s]*\|>|</?[A-Za-z_][A-Za-z0-9_.:\-]*>|\[[A-Z][A-Z_]*\])$")
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Characters byte-level BPE uses for bytes that are not printable Latin-1 (Ġ is a space,
# Ċ a newline): their presence is what tells a byte-level vocabulary apart.
_SHIFTED = {chr(c) for c in range(0x100, 0x144)}


def from_arrays(
    attention: Any,
    tokens: Sequence[str] | Sequence[Token],
    *,
    causal: bool | None = None,
    mask: Any = None,
    model: str | dict[str, Any] | None = None,
    text: str | None = None,
) -> AttentionRun:
    """A run from attention weights computed anywhere.

    `attention` is ``[layer, head, query, key]`` (a numpy, torch or JAX array, or nested
    lists), a list with one ``[head, query, key]`` (or ``[1, head, query, key]``) per layer,
    or one layer's ``[head, query, key]``. Weights are probabilities: each row sums to at most
    1 over the keys the query can see (below 1 is fine: attention sinks).

    `tokens` are the tokens attended over (queries and keys are the same tokens): the
    tokenizer's raw pieces (``Ġcat``, ``▁the``, ``##ing``), decoded strings (``" cat"``), or
    :class:`~attnmap.tokens.Token` objects. `text` is the input they came from; without it
    the text is rebuilt from the tokens.

    What each query cannot see: `mask` (``[query, key]`` or ``[layer, query, key]``, True =
    masked) if given; else the future when `causal` is True; else, when `causal` is None,
    the future if every head of every layer gives it exactly 0 attention; else nothing.

    `model` names the model (a string id) or gives its facts as a dict (``id`` and any
    others); layers, heads, causal and architecture are filled in from the arrays.
    """
    layers, tolerance = _layers(attention)  # each [head, query, key], float32
    n_layers, n_heads = len(layers), layers[0].shape[0]
    n = layers[0].shape[1]
    toks, run_text = _tokens(tokens, n, text)
    masks = _masks(layers, mask, causal)  # one [query, key] bool per layer
    for i, (a, m) in enumerate(zip(layers, masks)):
        _check_layer(i, a, m, explicit=mask is not None, tolerance=tolerance)
    facts = _model_facts(model, n_layers, n_heads)
    stack = AttentionStack("self", layers, masks[0], masks)
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    distinct, index = stack.distinct_masks()
    is_causal = n > 1 and all(bool(m[future].all()) for m in distinct)
    if causal is not None and mask is not None and bool(causal) != is_causal:
        seen = "lets queries see later keys" if causal else "hides every later key"
        raise AttnmapError(
            f"causal={causal} but the mask {seen}; leave causal out when you pass a mask "
            "(the mask decides)"
        )
    facts["causal"] = is_causal
    facts.setdefault("architecture", "decoder" if is_causal else "encoder")
    if not stack.uniform:
        facts["layer_masks"] = index
    return AttentionRun(text=run_text, tokens=toks, stacks={"self": stack}, model=facts)


# --- attention ---------------------------------------------------------------------------


def _eps(x: Any) -> float:
    """How far the input's rounding may push a row's sum past 1."""
    name = str(getattr(x, "dtype", "")).removeprefix("torch.")
    return max(ROW_TOLERANCE, _EPS.get(name, 0.0))


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """An array from numpy, torch (any dtype, any device) or JAX, as float32."""
    if hasattr(x, "detach"):  # torch: bfloat16 has no numpy dtype, so go through float32
        x = x.detach().cpu().float().numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise AttnmapError(
            f"{what} is not one rectangular array ({str(exc).splitlines()[0]}); "
            "give every layer the same [head, query, key] shape"
        ) from None
    problem = f"{what} must hold real numbers (not {arr.dtype}); pass the softmax probabilities"
    if arr.dtype == bool or arr.dtype.kind in "OSUc":
        raise AttnmapError(problem)
    try:  # JAX's bfloat16 (an ml_dtypes type) converts like any float
        return np.array(arr, dtype=np.float32)  # a copy: the run never aliases the caller's
    except (TypeError, ValueError):
        raise AttnmapError(problem) from None


def _layers(attention: Any) -> tuple[list[np.ndarray], float]:
    """Each layer's weights ``[head, query, key]`` as float32, and the row-sum tolerance."""
    if isinstance(attention, (list, tuple)) and attention and all(
            hasattr(a, "shape") for a in attention):
        layers = [_one_layer(_to_numpy(a, f"layer {i}"), i) for i, a in enumerate(attention)]
        tolerance = max(_eps(a) for a in attention)
    else:
        tolerance = _eps(attention)
        arr = _to_numpy(attention, "attention")
        if arr.ndim == 3:  # [head, query, key]: one layer
            layers = [arr]
        elif arr.ndim == 4:  # [layer, head, query, key]
            layers = list(arr)
        elif arr.ndim == 5:
            raise AttnmapError(
                f"attention of shape {arr.shape} has 5 axes; give [layer, head, query, key] "
                "for one input (drop the batch axis, e.g. a[:, 0] or a[0])"
            )
        else:
            raise AttnmapError(
                f"attention of shape {arr.shape} has {arr.ndim} axes; give [layer, head, query, "
                "key], a list of [head, query, key] per layer, or one layer's [head, query, key]"
            )
    if not layers:
        raise AttnmapError("attention has no layers; give at least one [head, query, key]")
    first = layers[0].shape
    if first[0] == 0 or first[1] == 0:
        raise AttnmapError(f"attention of shape {first} has no heads or no tokens")
    if first[1] != first[2]:
        raise AttnmapError(
            f"attention has {first[1]} queries and {first[2]} keys; from_arrays takes "
            "self-attention (queries and keys the same tokens), not cross-attention"
        )
    for i, a in enumerate(layers):
        if a.shape != first:
            raise AttnmapError(
                f"layer {i} has shape {a.shape} but layer 0 has {first}; every layer needs "
                "the same [head, query, key] shape"
            )
    return layers, tolerance


def _one_layer(a: np.ndarray, i: int) -> np.ndarray:
    if a.ndim == 4:  # [batch, head, query, key]
        if a.shape[0] != 1:
            raise AttnmapError(
                f"layer {i} holds a batch of {a.shape[0]} inputs {a.shape}; a run is one "
                "input: pick one item (e.g. [a[0] for a in layers])"
            )
        a = a[0]
    if a.ndim != 3:
        raise AttnmapError(
            f"layer {i} has shape {a.shape}; each layer must be [head, query, key] "
            "(or [1, head, query, key]); one head's [query, key] matrix becomes a[None]"
        )
    return a


def _check_layer(i: int, a: np.ndarray, m: np.ndarray, *, explicit: bool,
                 tolerance: float) -> None:
    """Probabilities: finite, not negative, zero where masked, rows at most 1."""
    bad = ~np.isfinite(a)
    if bad.any():
        h, q, k = (int(x) for x in np.argwhere(bad)[0])
        raise AttnmapError(
            f"attention holds NaN or inf (layer {i}, head {h}, query {q}, key {k}); pass "
            "softmax probabilities (masked cells 0, e.g. np.nan_to_num), not raw scores"
        )
    if a.min() < -NEGATIVE_TOLERANCE:
        h, q, k = (int(x) for x in np.argwhere(a < -NEGATIVE_TOLERANCE)[0])
        raise AttnmapError(
            f"attention is negative ({a[h, q, k]:.3g} at layer {i}, head {h}, query {q}, "
            f"key {k}); pass softmax probabilities, not scores or differences"
        )
    leak = np.abs(np.where(m, a, 0.0)) > MASKED_TOLERANCE  # [head, query, key]
    if leak.any():
        h, q, k = (int(x) for x in np.argwhere(leak)[0])
        fix = ("fix the mask (True = the query cannot see the key)" if explicit
               else "pass causal=False, or a mask of what each query could see")
        raise AttnmapError(
            f"masked cell holds attention {a[h, q, k]:.3g} (layer {i}, head {h}, query {q}, "
            f"key {k}); {fix}"
        )
    sums = a.sum(axis=-1, dtype=np.float64)  # [head, query]; masked cells are 0 by now
    over = sums > 1.0 + tolerance
    if over.any():
        h, q = (int(x) for x in np.argwhere(over)[0])
        raise AttnmapError(
            f"attention row sums to {sums[h, q]:.4g} (layer {i}, head {h}, query {q}); each "
            "query's weights over the keys it sees must sum to at most 1: pass softmax "
            "probabilities over the key axis (the last)"
        )


# --- masks -------------------------------------------------------------------------------


def _masks(layers: list[np.ndarray], mask: Any, causal: bool | None) -> list[np.ndarray]:
    n = layers[0].shape[1]
    future = np.triu(np.ones((n, n), dtype=bool), k=1)  # [query, key]
    if mask is not None:
        return _given_masks(mask, len(layers), n)
    if causal is None:
        causal = n > 1 and all(not a[:, future].any() for a in layers)
    elif not isinstance(causal, (bool, np.bool_)):
        raise AttnmapError(f"causal must be True, False or None (not {causal!r})")
    shared = future if causal else np.zeros((n, n), dtype=bool)
    return [shared] * len(layers)


def _given_masks(mask: Any, n_layers: int, n: int) -> list[np.ndarray]:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    try:
        m = np.asarray(mask)
    except (ValueError, TypeError) as exc:
        raise AttnmapError(
            f"mask is not one rectangular array ({str(exc).splitlines()[0]}); give [query, key] "
            "booleans"
        ) from None
    if m.dtype != bool:
        if m.dtype.kind in "iu" and np.isin(m, (0, 1)).all():
            m = m.astype(bool)
        elif m.dtype.kind == "f":
            raise AttnmapError(
                f"mask holds {m.dtype} numbers; give booleans, True where the query cannot see "
                "the key (an additive mask converts with mask < 0)"
            )
        else:
            raise AttnmapError(
                f"mask must be booleans, True where the query cannot see the key (not {m.dtype})"
            )
    if m.shape == (n, n):
        return [m.copy()] * n_layers
    if m.shape == (n_layers, n, n):
        return [m[i].copy() for i in range(n_layers)]
    raise AttnmapError(
        f"mask of shape {m.shape} does not fit {n_layers} layers of {n} tokens; give "
        f"[query, key] ({n}, {n}) or [layer, query, key] ({n_layers}, {n}, {n})"
    )


# --- model facts -------------------------------------------------------------------------


def _model_facts(model: Any, n_layers: int, n_heads: int) -> dict[str, Any]:
    if model is None:
        facts: dict[str, Any] = {"id": "arrays"}
    elif isinstance(model, str):
        facts = {"id": model}
    elif isinstance(model, dict):
        facts = dict(model)
        facts.setdefault("id", "arrays")
        if not isinstance(facts["id"], str):
            raise AttnmapError(f"model['id'] must be a string (not {facts['id']!r})")
    else:
        raise AttnmapError(
            f"model must be an id string or a dict of facts like {{'id': 'gpt2'}} "
            f"(not {type(model).__name__})"
        )
    for key, have in (("layers", n_layers), ("heads", n_heads)):
        said = facts.get(key)
        if said is not None and said != have:
            raise AttnmapError(
                f"model says {key}={said!r} but the attention has {have}; drop '{key}' from "
                "model or pass every layer/head"
            )
        facts[key] = have
    try:
        json.dumps(facts)
    except (TypeError, ValueError) as exc:
        raise AttnmapError(
            f"model facts must be plain JSON values (strings, numbers, lists, dicts): {exc}"
        ) from None
    facts.setdefault("source", "arrays")
    return facts


# --- tokens ------------------------------------------------------------------------------


def _tokens(tokens: Any, n: int, text: str | None) -> tuple[list[Token], str]:
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__len__"):
        raise AttnmapError(
            f"tokens must be a list of strings or Tokens, one per position (not "
            f"{type(tokens).__name__})"
        )
    items = list(tokens)
    for i, t in enumerate(items):
        if not isinstance(t, (str, Token)):
            hint = ("; turn ids into pieces with tokenizer.convert_ids_to_tokens(ids)"
                    if isinstance(t, (int, np.integer)) else "")
            raise AttnmapError(
                f"token {i} is a {type(t).__name__} ({t!r}); tokens must be strings or "
                f"attnmap Tokens{hint}"
            )
    if len(items) != n:
        raise AttnmapError(
            f"{len(items)} tokens for attention over {n} positions; give exactly one token per "
            "query/key position (the same tokens the attention was computed on)"
        )
    if text is not None and not isinstance(text, str):
        raise AttnmapError(f"text must be a string (not {type(text).__name__})")
    raws = [t.raw if isinstance(t, Token) else t for t in items]
    special = [t.special if isinstance(t, Token) else bool(_SPECIAL.match(t)) for t in items]
    kind = _alphabet([r for r, s in zip(raws, special) if not s])
    given = [t for t in items if isinstance(t, Token)]
    if text is not None:
        spelled, spans = _rebuild(raws, special, kind)
        if spelled != text:  # the pieces do not spell the text exactly: find each in turn
            spans = _find_spans([_piece_text(r, kind) for r in raws], special, text)
    elif any(t.start is not None or t.end is not None for t in given):
        raise AttnmapError(
            "tokens carry character offsets but no text was given; pass the text they "
            "point into (text=...)"
        )
    else:
        text, spans = _rebuild(raws, special, kind)
    out = []
    for t, raw, sp, span in zip(items, raws, special, spans):
        if isinstance(t, Token):
            if t.start is None and t.end is None and not t.special:
                t = Token(**{**t.to_dict(), "start": span[0], "end": span[1]})
            elif t.start is not None and t.end is not None and not (
                    0 <= t.start <= t.end <= len(text)):
                raise AttnmapError(
                    f"token {t.text!r} spans {t.start}..{t.end}, outside the text of "
                    f"{len(text)} characters; pass the text the tokens came from"
                )
            out.append(t)
            continue
        label = visible(raw) if sp else display_text(raw, kind)
        out.append(Token(text=label, raw=raw, id=-1, special=sp, start=span[0], end=span[1]))
    return out, text


def _alphabet(raws: list[str]) -> str:
    """Which tokenizer alphabet the pieces are written in (see :mod:`attnmap.tokens`)."""
    if any(ch in _SHIFTED for r in raws for ch in r):
        return "byte_level"  # pieces outside its alphabet (added tokens) stay as written
    if any("▁" in r for r in raws):
        return "metaspace"
    if any(r.startswith("##") and len(r) > 2 for r in raws):
        return "wordpiece"
    return "plain"


def _piece_bytes(raw: str, kind: str, first: bool) -> bytes:
    """The input bytes one piece stands for."""
    if kind == "byte_level":
        table = _byte_decoder()
        if all(ch in table for ch in raw):
            return bytes(table[ch] for ch in raw)
        return raw.encode()
    if kind == "metaspace":
        byte = _BYTE_PIECE.match(raw)  # SentencePiece's byte fallback
        return bytes([int(byte.group(1), 16)]) if byte else raw.replace("▁", " ").encode()
    if kind == "wordpiece":
        if raw.startswith("##") and len(raw) > 2:
            return raw[2:].encode()
        return raw.encode() if first else b" " + raw.encode()
    return raw.encode()


def _piece_text(raw: str, kind: str) -> str:
    return _piece_bytes(raw, kind, True).decode("utf-8", errors="ignore").strip(" ")


def _rebuild(raws: list[str], special: list[bool], kind: str
             ) -> tuple[str, list[tuple[int | None, int | None]]]:
    """The text the pieces spell and each piece's character span in it.

    Bytes go through one incremental UTF-8 decoder, so a character split over two pieces
    (byte-level BPE does this) is whole in the text and both pieces span it. Spans leave out
    the piece's leading and trailing spaces, as tokenizers' offsets do; a piece of spaces
    only has no span.
    """
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    pos = 0
    raw_spans: list[tuple[int, int] | None] = []
    first = True
    for raw, sp in zip(raws, special):
        if sp:
            raw_spans.append(None)
            continue
        start = pos  # a character still being built lands at `pos` too
        out = dec.decode(_piece_bytes(raw, kind, first))
        first = False
        parts.append(out)
        pos += len(out)
        pending = bool(dec.getstate()[0])
        raw_spans.append((start, pos + 1 if pending else pos))
    parts.append(dec.decode(b"", final=True))
    text = "".join(parts)
    shift = 1 if kind == "metaspace" and text.startswith(" ") else 0  # SentencePiece's prefix
    text = text[shift:]
    spans: list[tuple[int | None, int | None]] = []
    for span in raw_spans:
        if span is None:
            spans.append((None, None))
            continue
        s, e = max(span[0] - shift, 0), min(span[1] - shift, len(text))
        spans.append(_trim(text, s, e))
    return text, spans


def _trim(text: str, s: int, e: int) -> tuple[int | None, int | None]:
    while s < e and text[s] == " ":
        s += 1
    while e > s and text[e - 1] == " ":
        e -= 1
    return (s, e) if e > s else (None, None)


def _find_spans(pieces: list[str], special: list[bool], text: str
                ) -> list[tuple[int | None, int | None]]:
    """Each piece's span in a text given by the caller, found in order (None if absent)."""
    spans: list[tuple[int | None, int | None]] = []
    cursor = 0
    for piece, sp in zip(pieces, special):
        at = -1 if sp or not piece else text.find(piece, cursor)
        if at < 0:
            spans.append((None, None))
            continue
        spans.append((at, at + len(piece)))
        cursor = at + len(piece)
    return spans
