"""The viewer's wire format: a run packed as compact, versioned bytes.

Payload (``encode``)::

    b"ATNM" | u32 version | u32 header length | JSON header (UTF-8) | layer chunk | chunk …

Layer chunk (``encode_layer``), self-describing so that a server can send one alone::

    b"ATNL" | u32 version | u32 header length | JSON header (UTF-8) | zlib data

All integers are little-endian. The chunk's zlib data inflates (``DecompressionStream
('deflate')`` in the browser) to ``scales`` float32 ``[head, query]`` followed by ``codes``
uint8 ``[head, query, key]``. A code ``c`` in 0..128 stands for ``c / 128 * scale`` where
``scale`` is the row's maximum, so the error is at most ``scale / 256`` (within 1/255 of the
row's max) and every row keeps its peak exactly; code 255 marks a masked cell (the query cannot
see the key), which is therefore never confused with an attention of 0. Why 128 steps and not
254: the error bound only needs 128, and the smaller alphabet deflates ~22 % smaller (a
512-token, 6 × 12-head run: 5.9 MB instead of 7.5 MB), which keeps a standalone page of that
run under 8 MB. Scales come first so
the browser can view them as a Float32Array without copying (offset 0 is 4-byte aligned).
The zlib stream is written as independent raw-deflate pieces (the scales, then one per head)
joined into one stream, so heads compress in parallel; a reader sees one ordinary stream.

Size: within this error bound the codes are near their entropy (a 12 × 12 GPT-2-shaped random
run at 1,024 tokens: 4.46 bits per visible cell of order-0 entropy, deflate 3.58 MB per layer,
lzma 3.65), so no lossless reordering brings them near ``uint8(round(255·v))`` deflated, which
keeps an absolute 1/510 and rounds most weights of long rows to 0 (bench/RESULTS.md).

Compact precision (``encode(run, precision="compact")``, opt-in): the same layout and the same
decoding rule (value = code / 128 · scale), but each row gets its own number of levels,
``L = min(254, ⌈255 · row max⌉)``: codes are ``round(value / row max · L)`` in 0..L and the scale
written is ``row max · 128 / L``. Every cell is within ``COMPACT_TOL`` = 1/510 of its value (the
absolute error of ``uint8(round(255·v))``; a row whose max exceeds 254/255: within row max / 508),
the row's peak decodes to itself (its code is L), zeros stay 0 and masked cells 255. A scale is
then not the row's maximum: that is ``max code · scale / 128`` over the row's visible cells. Such
chunks and payloads say ``"encoding": "u8-rowlevels-254"`` and carry version 2
(``COMPACT_VERSION``), which a reader of version 1 refuses rather than misreading the scales;
full-precision payloads are unchanged, version 1. Size: long rows' small weights round to 0
(as in the floor), so a 12 × 12 GPT-2-shaped random run at 1,024 tokens shrinks ~30× and comes
within 1.5× of the floor (bench/RESULTS.md); tooltips then show 0 for weights below 1/510.

Token text travels only inside the JSON header, as data.

Optional header fields (a viewer that does not know them ignores them, so the version stays 1):

* per stack ``query_offsets`` / ``key_offsets``: ``[start, end]`` character offsets of each
  token into ``text`` (``target_text`` for decoder-side tokens), ``null`` for special tokens;
  the viewer maps words to tokens with them (the relation panel).
* per stack ``scores``: ``{"names": [score, …], "values": [[score, …] per head]}``, heads in
  layer-major order (``layer * heads + head``), ``null`` for a score with no eligible row;
  from :func:`attnmap.analysis.head_scores`. Left out for cross-attention and for runs longer
  than ``SCORES_MAX_TOKENS`` tokens.
* ``predictions`` / ``predictions_kind``: ``run.extra["predictions"]`` as captured, and
  ``predictions_stacks``, the stacks whose query rows the positions index.
* ``colormap`` / ``diverging``: ``{"name", "lut"}``, the sequential map (``cmap``, default
  Blues) and the diverging map of diff pages (RdBu_r) as 256 RGB entries in base64, taken from
  matplotlib (see ``colours.py``), so the page colours a value as attnmap's PNGs do.
* per stack ``query_roles`` / ``key_roles`` (chat role per token: "system", "user", … or
  ``null``) and ``query_messages`` / ``key_messages`` (the chat message each token belongs to,
  or ``null``): only where the tokens carry them; the viewer draws role bands from them.
* per stack ``query_generated`` / ``key_generated`` (per token: written by the model, from
  ``Token.generated``) and ``scores_generated`` (the census over the generated query rows
  only), and ``generation``: ``{"side": "input" | "target", "boundary": first generated
  position, "count", "positions"}``: only for runs with generated tokens (``attnmap.generate``);
  the viewer's step playback, generated-only rows and prompt/generation boundary read them.
  Generated runs' predictions (``predictions_kind`` "generate") may carry ``entropy``.

* ``image``: runs of an image only (see :func:`attnmap.patches.image_header`): size, patch
  grid, a base64 PNG thumbnail and each token's grid cell and pixel box; the viewer lays the
  query's row over the picture.

A diff page (``attnmap.viewer.diff_html``) carries two ordinary payloads, A and B, each a run
restricted to the aligned tokens (so both have the same shape and row i of A faces row i of
B); the viewer computes A − B from the two decoded layers, cell by cell (masked where either
is masked). The ranking of heads travels in the options as ``diff`` (see ``html.py``).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._errors import AttnmapError
from .._parallel import map_threads
from ..patches import image_header
from .colours import DEFAULT_CMAP, DIVERGING_CMAP, check_cmap, lut_entry

PAYLOAD_VERSION = 1  # full precision: what every reader since the first reads
COMPACT_VERSION = 2  # compact precision: a version-1 reader would take its scales for row maxima
MAGIC = b"ATNM"
LAYER_MAGIC = b"ATNL"
MASKED = 255  # the code of a masked cell
LEVELS = 128  # codes 0..128 carry values; step = row max / 128
ENCODING = "u8-rowmax-128"
# Compact precision: per row L = min(254, ⌈row max / (2·COMPACT_TOL)⌉) levels, codes 0..L, and
# the scale written is row max · 128 / L, so that code / 128 · scale decodes as in full.
COMPACT_ENCODING = "u8-rowlevels-254"
COMPACT_TOL = 1 / 510  # the absolute error of uint8(round(255·v)), the size floor's own
COMPACT_MAX_LEVELS = 254  # 255 is MASKED
PRECISIONS = ("full", "compact")
_ENCODINGS = {ENCODING: "full", COMPACT_ENCODING: "compact"}
_PREFIX = struct.Struct("<4sII")  # magic, version, header length
# Quantised attention is runs of small codes: zlib's run-length strategy deflates it as small
# as the default strategy at level 6 (6.1 MB for 512 tokens × 72 heads) in a fifth of the time.
COMPRESS_LEVEL = 6
SCORES_MAX_TOKENS = 2048  # above this the census would slow every page (≈1 s per 1,024 tokens)


def _json_bytes(obj: Any) -> bytes:
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        return raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a hand-made token or model id
        bad = raw[exc.start]
        near = raw[max(0, exc.start - 30):exc.start].encode("utf-8", "replace").decode()
        raise AttnmapError(
            f"the run holds a lone surrogate U+{ord(bad):04X} (after {near!r}), which is not "
            "text; fix the token, text or metadata that holds it (Python: str.encode('utf-8') "
            "finds it)") from None


def _stack_info(run: Any, name: str) -> dict[str, Any]:
    st = run.stack(name)
    q, k = run.query_tokens(name), run.key_tokens(name)
    n_layers, n_heads, n_q, n_k = st.shape
    return {
        "name": name,
        "shape": [n_layers, n_heads, n_q, n_k],  # [layer, head, query, key]
        "query_tokens": [t.text for t in q],
        "key_tokens": [t.text for t in k],
        "query_special": [bool(t.special) for t in q],
        "key_special": [bool(t.special) for t in k],
        "masked_cells": int(np.count_nonzero(st.masked_anywhere())),
        "query_offsets": [_offsets(t) for t in q],
        "key_offsets": [_offsets(t) for t in k],
        "scores": _scores(run, name),
        **_roles("query", q),
        **_roles("key", k),
        **_generated(run, name, q, k),
    }


def _generated(run: Any, name: str, q: list[Any], k: list[Any]) -> dict[str, Any]:
    """``{side}_generated`` (per token: written by the model) where any token was generated,
    and ``scores_generated``, the census over the generated rows only; else nothing."""
    out: dict[str, Any] = {}
    for side, tokens in (("query", q), ("key", k)):
        flags = [bool(getattr(t, "generated", False)) for t in tokens]
        if any(flags):
            out[f"{side}_generated"] = flags
    rows = [i for i, f in enumerate(out.get("query_generated", [])) if f]
    if rows:
        out["scores_generated"] = _scores(run, name, rows)
    return out


def _roles(side: str, tokens: list[Any]) -> dict[str, Any]:
    """``{side}_roles`` / ``{side}_messages`` where any token has a chat role, else nothing."""
    roles = [getattr(t, "role", None) for t in tokens]
    messages = [getattr(t, "message", None) for t in tokens]
    if all(r is None for r in roles) and all(m is None for m in messages):
        return {}
    return {
        f"{side}_roles": [None if r is None else str(r) for r in roles],
        f"{side}_messages": [None if m is None else int(m) for m in messages],
    }


def _offsets(t: Any) -> list[int] | None:
    if t.special or t.start is None or t.end is None:
        return None
    return [int(t.start), int(t.end)]


def _scores(run: Any, name: str, rows: list[int] | None = None) -> dict[str, Any] | None:
    """The head census of one self-attention stack (over query `rows`, default all), or
    None where it does not apply."""
    from ..analysis.scores import SCORE_NAMES, head_scores
    from ..run import STACK_SIDES

    q_side, k_side = STACK_SIDES[name]
    n = len(run.query_tokens(name))
    if q_side != k_side or n == 0 or n > SCORES_MAX_TOKENS:
        return None

    heads = head_scores(run, stack=name, rows=rows)  # layer-major, as the viewer indexes them
    return {
        "names": list(SCORE_NAMES),
        "values": [[h["scores"][n] for n in SCORE_NAMES] for h in heads],
    }


def _which_layers(run: Any, layers: Any) -> list[tuple[str, int]]:
    if isinstance(layers, str):
        if layers == "all":
            return [(name, i) for name, st in run.stacks.items() for i in range(st.n_layers)]
        if layers == "none":
            return []
        raise AttnmapError(f"layers must be 'all', 'none' or a list of layer numbers "
                           f"(not {layers!r})")
    if not isinstance(layers, Iterable):
        raise AttnmapError(f"layers must be 'all', 'none' or a list of layer numbers "
                           f"(not {layers!r})")
    wanted = list(layers)
    out: list[tuple[str, int]] = []
    for name in run.stacks:
        # The same layer numbers in every stack; sorted and without repeats.
        idx = sorted({run.layer_index(i, name) for i in wanted})
        out.extend((name, i) for i in idx)
    return out


def captured_text(text: str | None, tokens: list[Any] | None) -> str | None:
    """The part of `text` its tokens were read from.

    A run of an input cut with ``truncate`` holds the whole input text but the tokens of its
    start only; the viewer gets just the part those tokens cover (a page of a 2 MB text would
    otherwise carry all of it, and list each of its words). Runs whose tokens carry no
    offsets, or cover the text up to trailing white space, keep their text as it is.
    """
    if not text or not tokens:
        return text
    ends = [t.end for t in tokens if t.end is not None]
    if not ends:
        return text
    end = max(ends)
    return text if not text[end:].strip() else text[:end]


def header(
    run: Any, included: list[tuple[str, int]] | None = None, *, cmap: str = DEFAULT_CMAP,
    precision: str = "full",
) -> dict[str, Any]:
    """The JSON header of ``encode(run)`` as a dict (without the chunk list when None)."""
    model = {k: v for k, v in dict(run.model).items() if not isinstance(v, np.ndarray)}
    extra: dict[str, Any] = {}
    preds = (run.extra or {}).get("predictions")
    if preds:
        kind = run.extra.get("predictions_kind")
        decoder = kind == "decoder" or (kind == "generate" and "decoder" in run.stacks)
        extra = {
            "predictions": preds,
            "predictions_kind": kind,
            "predictions_stacks": ["decoder", "cross"] if decoder
            else [n for n in run.stacks if n in ("self", "encoder")],
        }
    extra.update(_generation(run))
    extra.update(image_header(run))  # runs of an image: thumbnail, grid, patch boxes
    return {
        "format": "attnmap-payload",
        "version": _version(precision),
        "model": model,
        "text": captured_text(run.text, run.tokens),
        "target_text": captured_text(run.target_text, run.target_tokens),
        "stacks": [_stack_info(run, name) for name in run.stacks],
        "encoding": _encoding(precision),
        "chunks": [],
        "included": [[s, i] for s, i in (included or [])],
        "colormap": lut_entry(check_cmap(cmap)),
        "diverging": lut_entry(DIVERGING_CMAP),
        **extra,
    }


def _generation(run: Any) -> dict[str, Any]:
    """``generation``: where the model's own tokens are, for the viewer's step playback."""
    for side in ("target_tokens", "tokens"):  # an encoder-decoder model writes its target
        tokens = getattr(run, side, None) or []
        gen = [i for i, t in enumerate(tokens) if getattr(t, "generated", False)]
        if gen:
            return {"generation": {
                "side": "target" if side == "target_tokens" else "input",
                "boundary": gen[0],  # tokens before it are the prompt
                "count": len(gen),
                "positions": gen,
            }}
    return {}


def check_drawable(run: Any) -> None:
    """Refuse a run the viewer could only show as a blank page: a stack with no layers, heads
    or tokens, or predictions that are not what :mod:`attnmap.predict` writes."""
    from ..run import check_predictions

    for name, st in run.stacks.items():
        if st.n_layers < 1:
            raise AttnmapError(f"the run's {name} attention has no layers; there is nothing "
                               "to show (capture a text with a model)")
        _, n_heads, nq, nk = st.shape
        if n_heads < 1 or nq < 1 or nk < 1:
            what = "heads" if n_heads < 1 else "tokens"
            raise AttnmapError(f"the run's {name} attention has no {what} ({nq} queries × "
                               f"{nk} keys, {n_heads} heads); there is nothing to show "
                               "(capture a non-empty text)")
    preds = (run.extra or {}).get("predictions")
    if preds is not None:
        try:
            check_predictions(preds)
        except ValueError as exc:
            raise AttnmapError(f"the run's {exc}; capture it again with predictions=True "
                               "(--predictions)") from None


def check_precision(precision: Any) -> str:
    """`precision` if it is one of ``PRECISIONS``, else a one-line error naming them."""
    if precision not in PRECISIONS:
        raise AttnmapError(f"precision must be 'full' or 'compact' (not {precision!r})")
    return str(precision)


def _encoding(precision: str) -> str:
    return COMPACT_ENCODING if check_precision(precision) == "compact" else ENCODING


def _version(precision: str) -> int:
    return COMPACT_VERSION if check_precision(precision) == "compact" else PAYLOAD_VERSION


def encode(
    run: Any, *, layers: Any = "all", level: int = COMPRESS_LEVEL, cmap: str = DEFAULT_CMAP,
    precision: str = "full",
) -> bytes:
    """Pack `run` for the viewer: header plus the chosen layers ('all', 'none' or numbers),
    coloured with matplotlib colormap `cmap`. `precision`: ``"full"`` (default: every cell
    within 1/256 of its row's max) or ``"compact"`` (within 1/510 absolute, ~1.5× the size of
    the weights as deflated uint8; see the module's docstring)."""
    return b"".join(encode_parts(run, layers=layers, level=level, cmap=cmap,
                                 precision=precision))


def encode_parts(
    run: Any, *, layers: Any = "all", level: int = COMPRESS_LEVEL, cmap: str = DEFAULT_CMAP,
    precision: str = "full",
) -> list[bytes]:
    """:func:`encode`'s bytes as a list (prefix and header, then one item per layer chunk),
    for writers that stream them rather than join them."""
    check_cmap(cmap)  # before the slow part
    check_precision(precision)
    check_drawable(run)
    included = _which_layers(run, layers)
    chunks = [encode_layer(run, s, i, level=level, precision=precision) for s, i in included]
    head = header(run, included, cmap=cmap, precision=precision)
    # Chunk lengths let a reader find layer n without parsing the ones before it.
    head["chunks"] = [
        {"stack": s, "layer": i, "length": len(c)}
        for (s, i), c in zip(included, chunks, strict=True)
    ]
    hb = _json_bytes(head)
    return [_PREFIX.pack(MAGIC, _version(precision), len(hb)) + hb, *chunks]


def quantise(weights: np.ndarray, masked: np.ndarray, *, precision: str = "full"
             ) -> tuple[np.ndarray, np.ndarray]:
    """``weights`` [head, query, key] and ``masked`` [query, key] → (scales, codes).

    Full precision: scales float32 [head, query], each row's maximum over the cells it may
    see; codes uint8 [head, query, key], 0..128 = value / scale * 128 rounded, 255 = masked.
    Compact: codes = value / row max · L rounded (L = :func:`row_levels` of the row max) and
    scales = row max · 128 / L, so that code / 128 · scale is the value in both.
    """
    compact = check_precision(precision) == "compact"
    w = np.asarray(weights)
    n_heads, nq, nk = w.shape
    scales = np.zeros((n_heads, nq), np.float32)  # [head, query]
    codes = np.empty((n_heads, nq, nk), np.uint8)  # [head, query, key]
    if nk == 0:
        return scales, codes
    hidden = np.asarray(masked, dtype=bool)  # [query, key]
    # One head at a time, in place in one float32 buffer: no whole-layer temporaries (at
    # 2,048 tokens × 12 heads: 1.66 s → 0.72 s against the array-at-once version, same codes).
    buf = np.empty((nq, nk), np.float32)
    for h in range(n_heads):
        np.copyto(buf, w[h], casting="unsafe")
        np.nan_to_num(buf, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.maximum(buf, np.float32(0), out=buf)
        buf[hidden] = 0
        top = buf.max(axis=1)  # [query]
        safe = np.where(top > 0, top, np.float32(1))
        if compact:
            levels = row_levels(top)
            np.multiply(buf, (levels / safe)[:, None], out=buf)
            scales[h] = _compact_scales(top, levels)
        else:
            np.multiply(buf, (np.float32(LEVELS) / safe)[:, None], out=buf)
            scales[h] = top
        np.rint(buf, out=buf)
        codes[h] = buf
        codes[h][hidden] = MASKED
    return scales, codes


def row_levels(top: np.ndarray) -> np.ndarray:
    """Compact precision's levels per row, float32 [query], from the row maxima `top`:
    ``min(254, ⌈row max / (2·COMPACT_TOL)⌉)`` (0 for a row of zeros), so a step of
    row max / L rounds every cell within COMPACT_TOL."""
    want = np.ceil(np.asarray(top, np.float64) * (0.5 / COMPACT_TOL))
    return np.clip(want, 0, COMPACT_MAX_LEVELS).astype(np.float32)


def _compact_scales(top: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """row max · 128 / L (0 where L is 0): the scale that decodes code L to the row's max."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.asarray(top, np.float32) * (np.float32(LEVELS) / levels)
    return np.where(levels > 0, s, np.float32(0)).astype(np.float32)


def encode_layer(run: Any, stack: str, layer: int, *, level: int = COMPRESS_LEVEL,
                 precision: str = "full") -> bytes:
    """One layer of one stack as a self-describing, deflate-compressed chunk (`precision`:
    ``"full"`` or ``"compact"``, see :func:`encode`).

    Heads are quantised and deflated one at a time on a few threads (numpy and zlib release
    the GIL), each into its own raw deflate piece; the pieces, byte-aligned by a sync flush
    and sharing no back-references, concatenate into one zlib stream whose Adler-32 is
    combined from theirs. A run stored as queries and keys is quantised straight from them
    (:func:`_qk_head`), without the float32 weights of a whole layer.
    """
    version = _version(precision)
    st = run.stack(stack)
    li = run.layer_index(layer, stack)
    mask = np.asarray(st.mask(li), dtype=bool)  # this layer's mask [query, key]
    n_heads, nq, nk = st.shape[1:]
    if st.lazy and nq and nk:
        qk = st.layers
        spans = _spans(mask)

        def head(h: int) -> tuple[np.ndarray, np.ndarray]:
            return _qk_head(qk, li, h, mask, spans, precision=precision)
    else:
        weights = st.layers[li]  # [head, query, key], any float dtype

        def head(h: int) -> tuple[np.ndarray, np.ndarray]:
            s, c = quantise(np.asarray(weights[h : h + 1]), mask, precision=precision)
            return s[0], c[0]

    def work(h: int) -> tuple[np.ndarray, bytes, int]:
        scales, codes = head(h)
        raw = codes.data.cast("B")  # contiguous uint8 [query, key]
        return scales, _raw_piece(raw, level, final=False), zlib.adler32(raw)

    done = map_threads(work, range(n_heads))
    scales = np.stack([d[0] for d in done]) if done else np.zeros((0, nq), np.float32)
    head_bytes = scales.astype("<f4").tobytes()
    body = [b"\x78\x01", _raw_piece(head_bytes, level, final=not done)]
    adler = zlib.adler32(head_bytes)
    for i, (_, piece, a) in enumerate(done):
        if i == len(done) - 1:
            piece += _FINAL_EMPTY_BLOCK
        body.append(piece)
        adler = _adler32_combine(adler, a, nq * nk)
    body.append(struct.pack(">I", adler))
    length = sum(len(b) for b in body)
    head_json = {
        "stack": st.name,
        "layer": li,
        "shape": [n_heads, nq, nk],  # [head, query, key]
        "encoding": _encoding(precision),
        "compression": "deflate",
        "length": length,
    }
    hb = _json_bytes(head_json)
    return b"".join([_PREFIX.pack(LAYER_MAGIC, version, len(hb)), hb, *body])


# A final, empty fixed-Huffman block: ends a stream of sync-flushed pieces.
_FINAL_EMPTY_BLOCK = b"\x03\x00"
_ADLER_BASE = 65521
_ROW_BLOCK_BYTES = 1 << 20  # float32 bytes per block of rows in _qk_head (about L2)


def _raw_piece(data: Any, level: int, *, final: bool) -> bytes:
    """`data` as raw deflate: ends the stream when `final`, else byte-aligned and open."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def _adler32_combine(a1: int, a2: int, len2: int) -> int:
    """The Adler-32 of A + B from that of A (`a1`), of B (`a2`) and B's length."""
    rem = len2 % _ADLER_BASE
    s1 = a1 & 0xFFFF
    s2 = (rem * s1) % _ADLER_BASE
    s1 = (s1 + (a2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    s2 = (s2 + (a1 >> 16) + (a2 >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return s1 | (s2 << 16)


def _spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, the first visible key and one past the last (0, 0 when none)."""
    vis = ~mask  # [query, key]
    nk = mask.shape[1]
    anyv = vis.any(axis=1)
    first = np.where(anyv, vis.argmax(axis=1), 0)
    last = np.where(anyv, nk - vis[:, ::-1].argmax(axis=1), 0)
    return first, last


def _qk_head(qk: Any, layer: int, h: int, mask: np.ndarray,
             spans: tuple[np.ndarray, np.ndarray], *, precision: str = "full"
             ) -> tuple[np.ndarray, np.ndarray]:
    """(scales [query], codes [query, key]) of one head of a q/k layer, as
    ``quantise(qk.compute(layer, [h]), mask, precision=precision)`` gives them (to float
    rounding).

    The row's maximum weight is softmax's largest term, ``1 / Σ exp(s − max s)`` (with a sink
    logit, ``1 / (Σ exp(s − max s) + exp(sink − max s))``), so a cell's code is just
    ``round(L · exp(s − max s))`` (L = 128, or the row's levels in compact precision): no
    division per cell. Rows go in blocks that stay in
    cache, and each block computes only the key columns its rows can see (half of a causal
    matrix is never computed).
    """
    q_all, k_all = qk.q[layer], qk.k[layer]
    rep = q_all.shape[0] // k_all.shape[0]
    q = np.asarray(q_all[h], dtype=np.float32)  # [query, dim]
    k = np.asarray(k_all[h // rep], dtype=np.float32)  # [key, dim]
    scaling = np.float32(qk.scaling[layer])
    cap = qk.softcap[layer]
    sink = None if qk.sinks is None else np.float32(qk.sinks[layer][h])
    compact = precision == "compact"
    nq, nk = mask.shape
    first, last = spans
    codes = np.full((nq, nk), MASKED, np.uint8)
    scales = np.zeros(nq, np.float32)
    rows = max(8, _ROW_BLOCK_BYTES // (4 * max(nk, 1)))
    buf = np.empty(rows * nk, np.float32)
    for r0 in range(0, nq, rows):
        r1 = min(nq, r0 + rows)
        seen = last[r0:r1] > first[r0:r1]
        if not seen.any():
            continue
        lo, hi = int(first[r0:r1][seen].min()), int(last[r0:r1].max())
        s = buf[: (r1 - r0) * (hi - lo)].reshape(r1 - r0, hi - lo)
        np.matmul(q[r0:r1], k[lo:hi].T, out=s)
        s *= scaling
        if cap is not None:
            s /= np.float32(cap)
            np.tanh(s, out=s)
            s *= np.float32(cap)
        hid = mask[r0:r1, lo:hi]
        np.copyto(s, np.float32(-np.inf), where=hid)
        top = s.max(axis=1, keepdims=True)  # [rows, 1]
        top[~seen] = 0.0
        s -= top
        np.exp(s, out=s)
        total = s.sum(axis=1, dtype=np.float32)
        if sink is not None:
            total += np.exp(sink - top[:, 0])
        with np.errstate(divide="ignore"):
            peak = np.where(seen & (total > 0), np.float32(1) / total, np.float32(0))
        if compact:
            levels = row_levels(peak)
            scales[r0:r1] = _compact_scales(peak, levels)
            s *= levels[:, None]
        else:
            scales[r0:r1] = peak
            s *= np.float32(LEVELS)
        np.rint(s, out=s)
        block = codes[r0:r1, lo:hi]
        np.copyto(block, s, casting="unsafe")
        np.copyto(block, np.uint8(MASKED), where=hid)
    return scales, codes


def _read_prefix(blob: bytes, offset: int, magic: bytes, what: str
                 ) -> tuple[dict[str, Any], int]:
    if len(blob) - offset < _PREFIX.size:
        raise AttnmapError(f"{what} is truncated ({len(blob) - offset} bytes)")
    got, version, n = _PREFIX.unpack_from(blob, offset)
    if got != magic:
        raise AttnmapError(f"not an attnmap {what} (starts with {got!r}, expected {magic!r})")
    if version > COMPACT_VERSION:
        raise AttnmapError(
            f"{what} version {version} is newer than this attnmap reads ({COMPACT_VERSION}); "
            "upgrade attnmap"
        )
    start = offset + _PREFIX.size
    if start + n > len(blob):
        raise AttnmapError(f"{what} is truncated (header needs {n} bytes)")
    return json.loads(blob[start : start + n].decode("utf-8")), start + n


def decode_layer(chunk: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_layer`.

    Returns ``stack``, ``layer``, ``shape``, ``values`` float32 [head, query, key] (masked
    cells 0), ``masked`` bool [head, query, key], ``scales`` and ``codes`` as sent,
    ``precision`` ("full" or "compact") and ``peaks`` float32 [head, query], each row's
    maximum (the scales themselves in full precision; in compact, max code · scale / 128).
    """
    head, at = _read_prefix(chunk, 0, LAYER_MAGIC, "layer chunk")
    precision = _ENCODINGS.get(head.get("encoding", ENCODING))
    if precision is None:
        raise AttnmapError(f"layer chunk encoding {head.get('encoding')!r} is not one this "
                           f"attnmap reads ({', '.join(_ENCODINGS)}); upgrade attnmap")
    body = chunk[at : at + int(head["length"])]
    raw = zlib.decompress(body)
    h, q, k = (int(x) for x in head["shape"])
    if len(raw) != h * q * 4 + h * q * k:
        raise AttnmapError(f"layer chunk holds {len(raw)} bytes, not the {h}×{q}×{k} it says")
    scales = np.frombuffer(raw, dtype="<f4", count=h * q).reshape(h, q)  # [head, query]
    codes = np.frombuffer(raw, dtype=np.uint8, offset=h * q * 4).reshape(h, q, k)
    masked = codes == MASKED
    values = codes.astype(np.float32) * (scales[:, :, None] / np.float32(LEVELS))
    values[masked] = 0.0
    if precision == "compact":
        top = np.where(masked, 0, codes).max(axis=2) if k else np.zeros((h, q), np.uint8)
        peaks = top.astype(np.float32) * (scales / np.float32(LEVELS))
    else:
        peaks = scales
    return {
        "stack": head["stack"],
        "layer": int(head["layer"]),
        "shape": [h, q, k],
        "values": values,
        "masked": masked,
        "scales": scales.astype(np.float32),
        "codes": codes,
        "precision": precision,
        "peaks": peaks.astype(np.float32),
        "size": at + len(body),
    }


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode`: ``version``, ``header`` and ``layers`` {(stack, layer): …}."""
    head, at = _read_prefix(blob, 0, MAGIC, "payload")
    layers: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in head.get("chunks", []):
        n = int(entry["length"])
        chunk = decode_layer(blob[at : at + n])
        layers[(chunk["stack"], chunk["layer"])] = chunk
        at += n
    if at != len(blob):
        raise AttnmapError(f"payload has {len(blob) - at} bytes after its last layer")
    return {"version": int(head["version"]), "header": head, "layers": layers}
