"""Level-of-detail tiles of one head: ``GET /api/runs/{run_id}/tiles`` (float32 bytes).

The viewer asks for the blocks a view needs: the whole matrix at screen resolution, then
finer blocks where it zooms, down to exact cells (``block=1``). Runs that keep queries and
keys compute their tiles from them (:mod:`attnmap.tiles`), a chunk of rows at a time, with
the normalisers and recent tiles in one bounded cache shared by every run of the server.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Query
from fastapi.responses import Response

from .. import tiles
from .._errors import AttnmapError
from ._deps import RunnerDep
from ._errors import ApiError, quote
from ._schemas import TILE, errors

router = APIRouter(prefix="/api")

# The most values one request may ask for (a 1024 × 1024 tile is 4 MB of float32).
MAX_CELLS = 1024 * 1024
_gpu_checked = False


def _use_gpu_if_there() -> None:
    """Once per process: compute q/k tiles with torch when a CUDA device is present."""
    global _gpu_checked
    if not _gpu_checked:
        _gpu_checked = True
        from .._tiles_torch import install

        install()


def _whole(value: float, name: str, least: int, hint: str) -> int:
    if not math.isfinite(value) or not float(value).is_integer() or value < least:
        raise ApiError(400, f"{name} must be a whole number ≥ {least} (not {value:g}); {hint}")
    return int(value)


@router.get(
    "/runs/{run_id}/tiles",
    summary="One head's attention in blocks: float32 little-endian [rows, cols], NaN = masked",
    response_class=Response,
    responses={200: TILE, **errors(404, 422, 504, binary=True)},
)
async def get_tile(
    run_id: str,
    runner: RunnerDep,
    stack: str | None = Query(None, description="default: the run's first stack"),
    layer: int = Query(0, description="layer number (negative counts from the end)"),
    head: str = Query("0", description="a head number, 'mean' or 'max' over the heads"),
    block: float = Query(1, description="cells per value along each side, a whole number "
                         "≥ 1 (1 = exact cells)"),
    q0: int = Query(0, description="the first query of the tile"),
    k0: int = Query(0, description="the first key of the tile"),
    rows: int | None = Query(None, description="values down (default: to the last query)"),
    cols: int | None = Query(None, description="values across (default: to the last key)"),
    reduce: str = Query("max", description="'max' (peaks) or 'sum' (mass) over a block"),
    ignore_first: bool = Query(False, description="leave key 0 out (attention sinks)"),
) -> Response:
    run = runner.store.get(run_id).run
    if stack is not None and stack not in run.stacks:
        raise ApiError(404, f"run {run_id} has no {quote(stack, 20)} attention; it has: "
                       f"{', '.join(run.stacks)}")
    st = run.stack(stack)
    try:
        layer = run.layer_index(layer, stack)
    except AttnmapError as exc:
        raise ApiError(404, f"{st.name} {exc}") from None
    n_heads = st.n_heads
    if head in tiles.HEAD_AGGREGATES:
        which: int | str = head
    else:
        try:
            which = int(head)
        except ValueError:
            raise ApiError(400, f"head must be a head number in 0..{n_heads - 1}, 'mean' or "
                           f"'max' (not {quote(head, 20)})") from None
        if not -n_heads <= which < n_heads:
            raise ApiError(404, f"{st.name} head must be in 0..{n_heads - 1} or "
                           f"-{n_heads}..-1 counting from the end (not {which})")
    b = _whole(block, "block", 1, "that would be a zoom beyond exact cells (block=1 is one "
               "cell per value)")
    _, _, nq, nk = st.shape
    if not (0 <= q0 < nq and 0 <= k0 < nk):
        raise ApiError(400, f"the tile starts at query {q0}, key {k0}: past the {nq} × {nk} "
                       f"matrix (q0 must be in 0..{nq - 1}, k0 in 0..{nk - 1})")
    n_rows = -(-(nq - q0) // b) if rows is None else rows
    n_cols = -(-(nk - k0) // b) if cols is None else cols
    if n_rows < 1 or n_cols < 1:
        raise ApiError(400, f"rows and cols must be at least 1 (not {n_rows}, {n_cols})")
    if n_rows * n_cols > MAX_CELLS:
        raise ApiError(400, f"a tile of {n_rows:,} × {n_cols:,} values is over this server's "
                       f"limit of {MAX_CELLS:,} per request; ask for fewer rows/cols or a "
                       "larger block")
    if reduce not in tiles.REDUCES:
        raise ApiError(400, f"reduce must be 'max' or 'sum' (not {quote(reduce, 20)})")

    def job_fn(job: object) -> bytes:
        if st.lazy:
            _use_gpu_if_there()
        t = tiles.tile(run, layer, which, stack=st.name, block=b, q0=q0, k0=k0, rows=n_rows,
                       cols=n_cols, reduce=reduce, ignore_first=ignore_first)
        return t.astype("<f4", copy=False).tobytes()

    try:
        data = await runner.work(job_fn, "the tile")
    except AttnmapError as exc:
        raise ApiError(400, str(exc)) from None
    return Response(data, media_type="application/octet-stream", headers={
        "x-tile-rows": str(n_rows), "x-tile-cols": str(n_cols), "x-tile-block": str(b),
        "cache-control": "private, max-age=3600"})
