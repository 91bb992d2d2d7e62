"""Image runs: tokens that are patches of a picture (numpy and the standard library only).

A vision transformer cuts the image its processor made (resized, perhaps centre-cropped) into
a grid of patches; each patch is one token. A run of an image records, in
``run.extra["image"]``:

* ``width``, ``height``: the original image, in pixels;
* ``grid``: ``[rows, cols]`` of the patch grid;
* ``model_input``: ``[height, width]`` of the picture the model saw (after resize and crop);
* ``kind``: ``"vision"`` (every token is a patch or a CLS/distillation/register token) or
  ``"vlm"`` (text tokens and image tokens in one sequence);

and in ``run.extra["image_png"]`` a thumbnail of the original image as PNG bytes (uint8, at
most :data:`THUMBNAIL_SIDE` pixels on its longer side). Each patch token carries its
``row``, ``col`` and ``box`` (pixels of the original image it covers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import AttnmapError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The longest side of the thumbnail a run file keeps (a 512-pixel PNG is ~0.3 MB at most).
THUMBNAIL_SIDE = 512
MAX_THUMBNAIL_BYTES = 4 << 20
MAX_GRID = 1024  # patches per side; the largest vision models use < 100
SPECIAL_KINDS = ("cls", "distillation", "register")


def image_magic(head: bytes) -> str | None:
    """'png', 'jpeg' or 'webp' from a file's first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def looks_like_image(value: str | os.PathLike[str] | None) -> bool:
    """True when `value` names an existing file that is a PNG, JPEG or WebP image (by its
    first bytes), or a path with an image file's extension (so a missing or broken image is
    reported as such, not read as text)."""
    if value is None:
        return False
    text = str(value)
    if "\n" in text or len(text) > 4096:
        return False
    path = Path(text).expanduser()
    try:
        if path.is_file():
            with open(path, "rb") as fh:
                if image_magic(fh.read(16)) is not None:
                    return True
    except OSError:
        pass
    return path.suffix.lower() in IMAGE_SUFFIXES and " " not in path.name


def image_meta(run: Any) -> dict[str, Any] | None:
    """The image facts of a run made from an image, or None for a text run."""
    meta = run.extra.get("image")
    return meta if isinstance(meta, dict) else None


def thumbnail_bytes(run: Any) -> bytes | None:
    """The run's thumbnail as PNG bytes (None when it has none)."""
    arr = run.extra.get("image_png")
    if arr is None:
        return None
    return np.asarray(arr, dtype=np.uint8).tobytes()


def patch_indices(tokens: list[Any]) -> np.ndarray:
    """Positions of the patch tokens ``[n_patches]`` in row-major grid order."""
    idx = [i for i, t in enumerate(tokens) if t.row is not None and t.col is not None]
    idx.sort(key=lambda i: (tokens[i].row, tokens[i].col))
    return np.asarray(idx, dtype=np.int64)


def special_indices(tokens: list[Any]) -> list[int]:
    """Positions of the CLS, distillation and register tokens."""
    return [i for i, t in enumerate(tokens) if t.kind in SPECIAL_KINDS]


def default_query(run: Any) -> int | None:
    """The query drawn when none is named: CLS (the first special token); for a VLM, the last
    text token; None (the mean over the patch rows) for a model without CLS (SigLIP)."""
    meta = image_meta(run) or {}
    if meta.get("kind") == "vlm":
        return len(run.tokens) - 1
    for i, t in enumerate(run.tokens):
        if t.kind == "cls":
            return i
    return None


def to_grid(row: np.ndarray, tokens: list[Any], grid: tuple[int, int]) -> np.ndarray:
    """The values of one attention row ``[key]`` at the patch keys, laid out ``[rows, cols]``
    (NaN where no token covers a grid cell)."""
    out = np.full(grid, np.nan, dtype=np.float64)  # [rows, cols]
    for i in patch_indices(tokens):
        t = tokens[int(i)]
        out[t.row, t.col] = row[int(i)]
    return out


def query_row(matrix: np.ndarray, query: int | None, tokens: list[Any]) -> np.ndarray:
    """Row `query` of ``[query, key]``; None: the mean of the patch rows."""
    if query is None:
        idx = patch_indices(tokens)
        rows = matrix[idx] if len(idx) else matrix
        return np.asarray(rows.mean(axis=0))
    return np.asarray(matrix[query])


def resized_size(width: int, height: int, size: dict[str, Any] | int | None,
                 ) -> tuple[int, int]:
    """(height, width) after an image processor's resize step, as transformers computes it:
    ``{"height", "width"}`` is exact; ``{"shortest_edge": s}`` scales the short side to ``s``
    and the long side to ``int(s · long / short)``."""
    if isinstance(size, int):
        return size, size
    if not size:
        return height, width
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        s = int(size["shortest_edge"])
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)
    raise AttnmapError(f"image processor size {size!r} is not one attnmap can map back to "
                       "pixels (expected height/width or shortest_edge)")


def patch_boxes(width: int, height: int, resized: tuple[int, int],
                crop: tuple[int, int] | None, patch: tuple[float, float],
                grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Per patch (row-major), the box ``(x0, y0, x1, y1)`` of the original image it covers.

    `resized` is (height, width) after the resize, `crop` (height, width) of a centre crop
    (None: no crop), `patch` (height, width) of one patch in the model's input.
    """
    rh, rw = resized
    top = left = 0
    if crop is not None:
        top, left = (rh - crop[0]) // 2, (rw - crop[1]) // 2
    sy, sx = height / rh, width / rw
    boxes = []
    for r in range(grid[0]):
        for c in range(grid[1]):
            y0, y1 = (top + r * patch[0]) * sy, (top + (r + 1) * patch[0]) * sy
            x0, x1 = (left + c * patch[1]) * sx, (left + (c + 1) * patch[1]) * sx
            boxes.append((int(np.clip(round(x0), 0, width)), int(np.clip(round(y0), 0, height)),
                          int(np.clip(round(x1), 0, width)), int(np.clip(round(y1), 0, height))))
    return boxes


def check_image_meta(meta: Any, token_info: list[dict[str, Any]]) -> None:
    """Raise ValueError unless a run file's ``extra.image`` has the shape a capture writes."""
    if not isinstance(meta, dict):
        raise ValueError("extra.image must be an object")
    for name in ("width", "height"):
        v = meta.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 20:
            raise ValueError(f"extra.image.{name} must be a positive integer (not {v!r:.40})")
    grid = meta.get("grid")
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and 0 < g <= MAX_GRID
                       for g in grid)):
        raise ValueError(f"extra.image.grid must be [rows, cols] (not {grid!r:.40})")
    if meta.get("kind") not in ("vision", "vlm"):
        raise ValueError(f"extra.image.kind must be vision or vlm (not {meta.get('kind')!r:.20})")
    for i, d in enumerate(token_info):
        r, c = d.get("row"), d.get("col")
        if (r is None) != (c is None):
            raise ValueError(f"token {i} has a row without a col, or a col without a row")
        if r is not None and c is not None and not (0 <= r < grid[0] and 0 <= c < grid[1]):
            raise ValueError(f"token {i} sits at ({r}, {c}), outside the {grid[0]}×{grid[1]} "
                             "patch grid")


def check_thumbnail(arr: np.ndarray) -> None:
    """Raise ValueError unless `arr` is PNG bytes of a bounded size."""
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError("extra.image_png must be PNG bytes (uint8, one dimension)")
    if arr.size > MAX_THUMBNAIL_BYTES:
        raise ValueError(f"extra.image_png holds {arr.size:,} bytes, more than a thumbnail "
                         f"({MAX_THUMBNAIL_BYTES:,})")
    if image_magic(arr[:16].tobytes()) != "png":
        raise ValueError("extra.image_png is not a PNG")


def image_header(run: Any) -> dict[str, Any]:
    """The viewer payload's ``image`` field for a run of an image (empty for a text run):
    size, grid, kind, the thumbnail as base64 PNG, per token ``[row, col, x0, y0, x1, y1]``
    (null for tokens that are not patches), per token its kind, and the default query."""
    import base64

    meta = image_meta(run)
    if meta is None:
        return {}
    png = thumbnail_bytes(run)
    return {"image": {
        "width": int(meta["width"]), "height": int(meta["height"]),
        "grid": [int(g) for g in meta["grid"]], "kind": meta.get("kind", "vision"),
        "png": None if png is None else base64.b64encode(png).decode("ascii"),
        "patches": [[t.row, t.col, *t.box] if t.row is not None and t.box is not None else None
                    for t in run.tokens],
        "kinds": [t.kind for t in run.tokens],
        "query": default_query(run),
    }}
