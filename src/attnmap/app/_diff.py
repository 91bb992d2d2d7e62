"""The app's diff endpoints: any two stored runs compared, and their aligned viewer payloads.

``GET /api/diff/{a}/{b}`` answers the ranking and the aligned token positions (equal tokens
and substitutions, flagged in ``changed``);
``GET /api/diff/{a}/{b}/payload/a`` and ``…/b`` the two runs cut to those positions, in the
form the viewer's diff mode reads (``payload`` and ``payload_b``). The three requests of one
diff view would each align the runs again, so alignments are kept in a small LRU of their own:
only index arrays and the ranking, never the runs, so a run evicted from the store is not kept
alive here (its id answers 404 before the cache is read).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter

from .._errors import AttnmapError
from ._deps import AlignmentsDep, OctetStream, RunnerDep
from ._errors import ApiError
from ._jobs import Runner
from ._schemas import BINARY, DiffResult, errors

# Stored runs cannot change under an id, so an alignment for (a, b, stack) stays valid.
CACHE_SIZE = 32


@dataclass(frozen=True)
class Alignment:
    stack: str
    ia: np.ndarray  # [aligned] positions in run a
    ib: np.ndarray  # [aligned] positions in run b
    ranking: list[dict[str, Any]]  # most changed head first, as attnmap.diff.compare ranks
    changed: np.ndarray  # [aligned] bool: a substituted pair (the tokens differ)


class AlignmentCache:
    """Recent alignments keyed by ``(id_a, id_b, stack or None)``."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str | None], Alignment] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str | None]) -> Alignment | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: tuple[str, str, str | None], value: Alignment) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def remember(self, id_a: str, id_b: str, d: Any, stack: str | None = None) -> Alignment:
        """Keep the alignment of ``attnmap.diff.compare``'s result `d` (from the perturb call)."""
        al = Alignment(d.stack, np.asarray(d.ia), np.asarray(d.ib), d.ranking,
                       np.asarray(d.changed, dtype=bool))
        self.put((id_a, id_b, stack), al)
        if stack != d.stack:
            self.put((id_a, id_b, d.stack), al)
        return al


def labels(run_a: Any, run_b: Any) -> dict[str, str]:
    """What the viewer calls A and B: the texts for one model, the model ids for two."""
    ma, mb = run_a.model.get("id"), run_b.model.get("id")
    if ma == mb:
        return {"a": run_a.text, "b": run_b.text}
    return {"a": str(ma), "b": str(mb)}


router = APIRouter(prefix="/api/diff")


async def alignment(runner: Runner, cache: AlignmentCache, id_a: str, id_b: str,
                    stack: str | None) -> tuple[Any, Any, Alignment]:
    run_a = runner.store.get(id_a).run  # 404 for unknown or evicted ids, as elsewhere
    run_b = runner.store.get(id_b).run
    key = (id_a, id_b, stack)
    hit = cache.get(key)
    if hit is not None:
        return run_a, run_b, hit

    def job(_: Any) -> Alignment:
        from ..diff import compare

        try:
            d = compare(run_a, run_b, stack=stack)
        except AttnmapError as exc:
            raise ApiError(400, str(exc)) from None
        return cache.remember(id_a, id_b, d, stack)

    return run_a, run_b, await runner.work(job, "the diff")


@router.get("/{id_a}/{id_b}",
            summary="Compare two runs: heads ranked by change, and the aligned token positions",
            response_model=DiffResult, responses=errors(404, 422, 504))
async def get_diff(id_a: str, id_b: str, runner: RunnerDep, cache: AlignmentsDep,
                   stack: str | None = None) -> dict[str, Any]:
    run_a, run_b, al = await alignment(runner, cache, id_a, id_b, stack)
    return {
        "a": id_a,
        "b": id_b,
        "stack": al.stack,
        "aligned": int(al.ia.size),
        # positions in each run's query tokens of the stack: equal or substituted pairs
        "positions": {"a": al.ia.tolist(), "b": al.ib.tolist()},
        "changed": al.changed.tolist(),
        "labels": labels(run_a, run_b),
        "ranking": al.ranking,
    }


@router.get(
    "/{id_a}/{id_b}/payload/{side}",
    summary="Run a or b cut to the aligned tokens, as a viewer payload with every layer "
    "(application/octet-stream)",
    response_class=OctetStream,
    responses={200: BINARY, **errors(404, 422, 504, binary=True)},
)
async def get_diff_payload(id_a: str, id_b: str, side: str, runner: RunnerDep,
                           cache: AlignmentsDep, stack: str | None = None) -> OctetStream:
    if side not in ("a", "b"):
        raise ApiError(404, f"no payload {side[:20]!r}: ask for payload/a or payload/b")
    run_a, run_b, al = await alignment(runner, cache, id_a, id_b, stack)
    run, idx = (run_a, al.ia) if side == "a" else (run_b, al.ib)

    def job(_: Any) -> bytes:
        from ..diff import aligned_run
        from ..viewer.payload import encode

        return encode(aligned_run(run, al.stack, idx),  # type: ignore[no-any-return]
                      cmap=runner.cmap)

    return OctetStream(await runner.work(job, "encoding the diff"))
