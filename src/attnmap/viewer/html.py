"""One self-contained ``.html`` file: the viewer module, its css and the run, no network.

The page is fixed markup plus three data elements that the page reads with ``textContent``:
the payload (base 85 text over an alphabet with no ``<``, ``&`` or quotes), the options (JSON
with ``<`` escaped) and the module source (checked to hold no ``</script``/``<!--``). Token
text lives only inside the payload bytes; nothing from the run is spliced into markup or script.
The page turns the module text into a Blob URL and ``import()``s it, so the module is the very
same file the widget and the app load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._errors import AttnmapError
from .._io import atomic_path
from .._options import AGGREGATES, VIEWS, check_head, check_scale
from .colours import DEFAULT_CMAP
from .payload import check_precision, encode, encode_parts

# Same alphabet as viewer.js's b85decode: printable ASCII without < > & " ' \ ` / -
B85 = "!#$%()*+,.0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~"
assert len(B85) == 85 and not set(B85) & set("<>&\"'\\`/-")
_B85 = np.frombuffer(B85.encode("ascii"), dtype=np.uint8)

OPTION_KEYS = ("stack", "layer", "head", "scale", "view", "ignore_first", "step")


def b85encode(data: bytes) -> str:
    """Big-endian base 85, 4 bytes → 5 characters; the byte length travels separately."""
    return b"".join(_b85_pieces([data])).decode("ascii")


# Base 85 two digits at a time: 85² = 7,225 pairs in a table, and w // 7225 as
# (w · M) >> 44, exact for every w < 2³² (checked exhaustively): three multiply-shifts per
# 4 bytes instead of five 64-bit divisions.
_B85_PAIRS = np.stack([_B85[np.arange(7225) // 85], _B85[np.arange(7225) % 85]], axis=1
                      ).copy().view(np.uint16)[:, 0]  # [pair] the two characters, in order
_DIV_M, _DIV_S = np.uint64(2434904643), np.uint64(44)
_B85_PIECE = 1 << 22  # bytes encoded per numpy pass (bounded temporaries)


def _b85_pieces(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Base 85 of the concatenation of `parts`, in pieces, without joining them."""
    carry = b""
    for part in parts:
        mv = memoryview(part)
        at = 0
        if carry:
            need = 4 - len(carry)
            carry += bytes(mv[:need])
            at = need
            if len(carry) < 4:
                continue
            yield _b85_words(carry)
            carry = b""
        while len(mv) - at >= 4:
            n = min(_B85_PIECE, (len(mv) - at) // 4 * 4)
            yield _b85_words(mv[at : at + n])
            at += n
        carry = bytes(mv[at:])
    if carry:
        yield _b85_words(carry + b"\0" * (4 - len(carry)))


def _b85_words(data: Any) -> bytes:
    w = np.frombuffer(data, dtype=">u4").astype(np.uint64)  # [group]
    out = np.empty((w.size, 3), dtype=np.uint16)  # [group, digit pair]; the first pair's
    hi = (w * _DIV_M) >> _DIV_S  # w // 85²                  first character is dropped below
    out[:, 2] = _B85_PAIRS[w - hi * np.uint64(7225)]
    top = (hi * _DIV_M) >> _DIV_S  # < 83
    out[:, 1] = _B85_PAIRS[hi - top * np.uint64(7225)]
    out[:, 0] = _B85_PAIRS[top]
    return out.view(np.uint8).reshape(w.size, 6)[:, 1:].tobytes()


def static_text(name: str) -> str:
    """The text of ``viewer.js`` or ``viewer.css`` as shipped in the package."""
    return resources.files("attnmap.viewer").joinpath("static", name).read_text("utf-8")


def check_options(run: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the initial view against the run; return the options the viewer reads."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise AttnmapError(
            f"unknown viewer option {unknown[0]!r}; known: {', '.join(OPTION_KEYS)}"
        )
    out: dict[str, Any] = {}
    stack = options.get("stack")
    if stack is not None:
        out["stack"] = run.stack(stack).name
    if options.get("layer") is not None:
        out["layer"] = run.layer_index(options["layer"], stack)
    head = options.get("head")
    if head is not None:
        head = check_head(head)
        out["head"] = head if head in AGGREGATES else run.head_index(head, stack)
    scale = options.get("scale")
    if scale is not None:
        # the viewer's own name for "0 to the largest value shown" is "head"
        out["scale"] = "head" if check_scale(scale, stacklevel=6) == "data" else scale
    view = options.get("view")
    if view is not None:
        if view not in VIEWS:
            raise AttnmapError(f"view must be {', '.join(map(repr, VIEWS))} (not {view!r})")
        if view == "generated":
            _generated_count(run, "view='generated'")
        out["view"] = view
    if options.get("ignore_first") is not None:
        out["ignore_first"] = bool(options["ignore_first"])
    step = options.get("step")
    if step is not None:
        n = _generated_count(run, "step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= n:
            raise AttnmapError(f"step must be a whole number in 0..{n}, the generated tokens "
                               f"shown (not {step!r})")
        out["step"] = int(step)
    return out


def _generated_count(run: Any, what: str) -> int:
    """How many tokens the model generated in `run`; an error naming `what` when none."""
    tokens = list(run.target_tokens or []) + list(run.tokens or [])
    n = sum(bool(getattr(t, "generated", False)) for t in tokens)
    if not n:
        raise AttnmapError(f"{what} needs a run with generated tokens (make one with "
                           "attnmap.generate)")
    return n


def _script_safe(text: str, what: str) -> str:
    if re.search(r"</script|<!--", text, re.IGNORECASE):
        raise AssertionError(f"{what} holds '</script' or '<!--' and cannot be inlined")
    return text


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; img-src blob: data:; \
connect-src blob: data:">
<title>attnmap</title>
<style>
body {{ margin: 0; padding: 8px; background: #fff; }}
{css}
</style>
</head>
<body>
<div id="attnmap-root"></div>
<script type="application/x-attnmap-b85" id="attnmap-payload" data-length="{length}">
{payload}
</script>
{payload_b}{long}<script type="application/json" id="attnmap-options">{options}</script>
<script type="text/plain" id="attnmap-module">
{module}
</script>
<script type="module">
const text = (id) => document.getElementById(id).textContent;
const url = URL.createObjectURL(new Blob([text("attnmap-module")], {{ type: "text/javascript" }}));
const mod = await import(url);
URL.revokeObjectURL(url);
const el = document.getElementById("attnmap-root");
const payload = mod.b85decode(
  text("attnmap-payload"), Number(document.getElementById("attnmap-payload").dataset.length));
const pb = document.getElementById("attnmap-payload-b");
const payload_b = pb ? mod.b85decode(pb.textContent, Number(pb.dataset.length)) : null;
// Long runs: one element per head (and mask), decoded only when the viewer asks for it.
const longEls = new Map(Array.from(document.querySelectorAll("script.attnmap-long"),
                                   (e) => [e.dataset.key, e]));
const long_chunk = (key) => {{
  const e = longEls.get(key);
  return e ? mod.b85decode(e.textContent, Number(e.dataset.length)) : null;
}};
const state = {{ payload, payload_b, options: JSON.parse(text("attnmap-options")), layer_url: "",
                long_chunk }};
const model = {{ get: (k) => state[k], set() {{}}, save_changes() {{}}, on() {{}}, off() {{}} }};
mod.default.render({{ model, el }});
</script>
</body>
</html>
"""


REPRESENTATIONS = ("auto", "dense", "long")


def representation_of(run: Any, representation: str = "auto") -> str:
    """``"dense"`` or ``"long"``: the page `representation` ("auto" chooses by size,
    ``longpage.choose``); a one-line error for anything else."""
    if representation not in REPRESENTATIONS:
        raise AttnmapError(f"representation must be 'auto', 'dense' or 'long' "
                           f"(not {representation!r})")
    if representation != "auto":
        return representation
    from . import longpage

    return longpage.choose(run)


def page(run: Any, *, cmap: str = DEFAULT_CMAP, representation: str = "auto",
         precision: str = "full", **options: Any) -> str:
    """The standalone page for `run` as a string (`options`: see :func:`to_html`)."""
    opts = check_options(run, options)
    check_precision(precision)
    if representation_of(run, representation) == "long":
        from . import longpage

        return long_page(longpage.build(run, cmap=cmap, encode=b85encode), opts)
    return "".join(_page_text(encode_parts(run, cmap=cmap, precision=precision), opts))


def long_page(data: Any, opts: dict[str, Any]) -> str:
    """The page of a long representation (``longpage.build``): header plus one element each
    head and mask, so the viewer reads and decodes only the head it shows."""
    return "".join(_page_text([data.payload], opts, long=_long_elements(data)))


def write_long_html(data: Any, path: str | os.PathLike[str], opts: dict[str, Any]) -> int:
    """Write :func:`long_page` to `path` piece by piece (never the whole page as one string;
    `opts` from :func:`check_options`); returns its size in bytes. Build `data` with
    ``encode=b85encode`` and the worker threads have already made each element's text."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        return _write(fh, _page_text([data.payload], opts, long=_long_elements(data)))


def _long_elements(data: Any) -> Iterator[str]:
    texts = data.encoded or [None] * len(data.chunks)
    for (key, blob), text in zip(data.chunks, texts, strict=True):
        # keys: stack names and numbers, never token text
        yield (f'<script type="application/x-attnmap-b85" class="attnmap-long" data-key="{key}" '
               f'data-length="{len(blob)}">')
        yield b85encode(blob) if text is None else text
        yield "</script>\n"


def _page(blob: bytes, opts: dict[str, Any], blob_b: bytes | None = None) -> str:
    return "".join(_page_text([blob], opts, blob_b))


def _page_text(parts: list[bytes], opts: dict[str, Any], blob_b: bytes | None = None, *,
               long: Iterable[str] = ()) -> Iterator[str]:
    """The page in pieces: the payload `parts` (together, the bytes of ``encode``) go out as
    base 85 piece by piece, then the `long` elements, so a long run's page never exists whole
    in memory."""
    opts_json = json.dumps(opts).replace("<", "\\u003c")  # never a `</script` inside JSON
    extra = ""
    if blob_b is not None:
        extra = (f'<script type="application/x-attnmap-b85" id="attnmap-payload-b" '
                 f'data-length="{len(blob_b)}">\n{b85encode(blob_b)}\n</script>\n')
    cut, cut_long = "\0payload\0", "\0long\0"
    before, after = _PAGE.format(
        css=_script_safe(static_text("viewer.css"), "viewer.css").replace("</", "<\\/"),
        length=sum(len(p) for p in parts),
        payload=cut,
        payload_b=extra,
        long=cut_long,
        options=opts_json,
        module=_script_safe(static_text("viewer.js"), "viewer.js"),
    ).split(cut)
    middle, after = after.split(cut_long)
    yield before
    for piece in _b85_pieces(parts):
        yield piece.decode("ascii")
    yield middle
    yield from long
    yield after


def write_html(
    run: Any, path: str | os.PathLike[str], *, cmap: str = DEFAULT_CMAP, precision: str = "full",
    **options: Any
) -> int:
    """Write the page of :func:`to_html` to `path` without holding it as one string (a long
    run's page can be a gigabyte); returns its size in bytes."""
    opts = check_options(run, options)
    parts = encode_parts(run, cmap=cmap, precision=precision)
    size = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        size = _write(fh, _page_text(parts, opts))
    return size


def _write(fh: TextIO, pieces: Iterable[str]) -> int:
    size = 0
    for piece in pieces:
        fh.write(piece)
        size += len(piece.encode("utf-8")) if not piece.isascii() else len(piece)
    return size


def to_html(
    run: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    stack: str | None = None,
    layer: int | None = None,
    head: int | str | None = None,
    scale: str | None = None,
    view: str | None = None,
    ignore_first: bool | None = None,
    step: int | None = None,
    cmap: str = DEFAULT_CMAP,
    representation: str = "auto",
    precision: str = "full",
) -> str:
    """A self-contained HTML page that shows `run`; written to `path` when given.

    The keywords set the first view (the page can change all of them): `stack`, `layer`,
    `head` (a number, ``"mean"`` or ``"max"``), `scale` (``"unit"``, ``"data"`` — the
    default, 0 to the head's largest value — or ``"log"``), `view` (``"heatmap"``,
    ``"heads"``, ``"layers"``, or ``"generated"``: the rows of the generated tokens, for runs
    from ``attnmap.generate``), `ignore_first` (leave the first token out of the colour
    scale), `step` (open the step playback at step t: the prompt and the first t generated
    tokens). `cmap` is a matplotlib colormap name (default Blues, as in ``attnmap.heatmap``):
    a value gets the same colour on the page as in the PNG. The page opens from ``file://``
    with the network off. `representation`: ``"dense"`` carries every weight; ``"long"`` a
    pyramid of block maxima and sums plus each row's largest weights (see ``longpage``), which
    stays small at thousands of tokens; ``"auto"`` (default) picks long for big runs.
    `precision` (dense pages): ``"full"`` (default; every cell within 1/256 of its row's max)
    or ``"compact"`` (within 1/510 absolute, the error of 8-bit weights: small weights of long
    rows show as 0, and the page is up to ~30× smaller; see ``payload``).
    """
    options = {"stack": stack, "layer": layer, "head": head, "scale": scale, "view": view,
               "ignore_first": ignore_first, "step": step}
    html = page(run, cmap=cmap, representation=representation, precision=precision,
                **{k: v for k, v in options.items() if v is not None})
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(html, encoding="utf-8")
    return html


# --- the diff page ----------------------------------------------------------------------------
DIFF_OPTION_KEYS = ("layer", "head", "view", "metric")


def diff_page(d: Any, *, cmap: str = DEFAULT_CMAP, **options: Any) -> str:
    """The standalone diff page for ``attnmap.diff.compare``'s result `d` as a string."""
    unknown = sorted(set(options) - set(DIFF_OPTION_KEYS))
    if unknown:
        raise AttnmapError(
            f"unknown diff view option {unknown[0]!r}; known: {', '.join(DIFF_OPTION_KEYS)}"
        )
    top = d.ranking[0] if d.ranking else {"layer": 0, "head": 0}
    layer = options.get("layer")
    head = options.get("head")
    opts: dict[str, Any] = {
        "stack": d.stack,
        "layer": d.a.layer_index(layer if layer is not None else top["layer"], d.stack),
        "head": d.a.head_index(head if head is not None else top["head"], d.stack),
        "view": options.get("view") or "diff",
        "metric": options.get("metric") or "js",
    }
    if opts["view"] not in ("diff", "change", "heatmap", "heads", "layers"):
        raise AttnmapError(f"view must be 'diff', 'change', 'heatmap', 'heads' or 'layers' "
                           f"(not {opts['view']!r})")
    if opts["metric"] not in ("js", "mean_abs"):
        raise AttnmapError(f"metric must be 'js' or 'mean_abs' (not {opts['metric']!r})")
    ma, mb = d.a.model.get("id"), d.b.model.get("id")
    same_model = ma == mb
    opts["diff"] = {
        "ranking": d.ranking,
        "aligned": int(len(d.ia)),
        "a": d.a.text if same_model else f"{ma}",
        "b": d.b.text if same_model else f"{mb}",
        "stack": d.stack,
        "changed": [bool(c) for c in d.changed],  # per aligned position: substituted
    }
    ra, rb = d.aligned_run("a"), d.aligned_run("b")
    return _page(encode(ra, cmap=cmap), opts, encode(rb, cmap=cmap))


def diff_html(
    d: Any, path: str | os.PathLike[str] | None = None, *, cmap: str = DEFAULT_CMAP,
    **options: Any,
) -> str:
    """A self-contained page comparing the two runs of `d` (from ``attnmap.diff.compare``).

    For any head it shows A, B and A − B on the aligned tokens (A − B on a diverging scale
    centred on 0, symmetric limits; a substituted token labelled ``keys→key``), and a
    layers × heads grid coloured by change (JS divergence or mean |A − B|); click a head to
    open it. Options: ``layer``, ``head`` (default:
    the most changed head), ``view`` ('diff' or 'change'), ``metric`` ('js' or 'mean_abs').
    A and B use colormap `cmap`; A − B uses matplotlib's RdBu_r, as ``attnmap diff``'s PNG does.
    """
    html = diff_page(d, cmap=cmap, **options)
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(html, encoding="utf-8")
    return html
