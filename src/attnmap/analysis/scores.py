"""Per-head scores: one number per head for each kind of pattern people look for.

All scores are means over the rows (queries) that have something to score; a row whose target
set is empty (row 0 has no previous token; a token with no earlier copy has no induction
target) does not count. Masked cells (``stack.masked``) are not keys. Definitions and sources
are in ``docs/reading.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import AttnmapError, deprecated
from ..run import STACK_SIDES, AttentionRun

SCORE_NAMES = (
    "self",
    "previous_token",
    "next_token",
    "first_token",
    "duplicate_token",
    "induction",
    "locality",
    "mean_distance",
    "entropy",
    "entropy_norm",
    "special",
)
# Scores that follow TransformerLens' head detector and so honour ignore_first/current.
PATTERN_SCORES = ("previous_token", "duplicate_token", "induction", "locality")


def self_stack_name(run: AttentionRun, stack: str | None, what: str) -> str:
    """The stack's name, refusing stacks whose queries and keys are different tokens."""
    st = run.stack(stack)
    q_side, k_side = STACK_SIDES[st.name]
    if q_side != k_side:
        squares = [n for n in run.stacks if STACK_SIDES[n][0] == STACK_SIDES[n][1]]
        raise AttnmapError(
            f"{what} needs self-attention (queries and keys the same tokens); {st.name!r} is "
            f"cross-attention; use --stack {' or '.join(squares) or 'self'}"
        )
    return st.name


def token_keys(tokens: list[Any]) -> list[tuple[int, str]]:
    """Identity of each token for finding copies: (vocabulary id, raw string).

    The raw string keeps merged words (id -1) apart; for ordinary tokens it adds nothing.
    """
    return [(int(t.id), str(t.raw)) for t in tokens]


def copy_pairs(keys: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) position pairs of equal tokens, earlier < later."""
    where: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        where.setdefault(k, []).append(i)
    early: list[int] = []
    late: list[int] = []
    for pos in where.values():
        for b in range(1, len(pos)):
            early.extend(pos[:b])
            late.extend([pos[b]] * b)
    return np.asarray(early, dtype=np.int64), np.asarray(late, dtype=np.int64)


class _Targets:
    """A sparse target set: (query, key) pairs, grouped by query for fast row sums."""

    def __init__(self, q: np.ndarray, k: np.ndarray, n: int, masked: np.ndarray,
                 excluded_cols: np.ndarray):
        keep = ~masked[q, k] & ~excluded_cols[q, k] if len(q) else np.zeros(0, bool)
        q, k = q[keep], k[keep]
        order = np.lexsort((k, q))
        self.q, self.k = q[order], k[order]
        self.rows, self.starts = np.unique(self.q, return_index=True)  # rows with a target

    def row_mass(self, a: np.ndarray) -> np.ndarray:
        """``Σ_{j∈S_i} A[h, i, j]`` for the rows that have targets: ``[head, row]``."""
        if len(self.q) == 0:
            return np.zeros((a.shape[0], 0), dtype=np.float64)
        vals = a[:, self.q, self.k].astype(np.float64)  # [head, pair]
        return np.add.reduceat(vals, self.starts, axis=1)


def head_scores(
    run: AttentionRun,
    *,
    stack: str | None = None,
    ignore_first: bool = False,
    ignore_current: bool = False,
    locality_k: int = 2,
    exclude_first: bool | None = None,
    exclude_current: bool | None = None,
    rows: Any = None,
) -> list[dict[str, Any]]:
    """Scores for every head: ``[{"layer", "head", "scores": {name: float | None}}, …]``.

    A score is None when no row of this text has a target for it (e.g. ``induction`` on a
    text without repeated tokens). ``ignore_first``/``ignore_current`` take the first key
    and the query's own key out of both the targets and the row's mass for the pattern scores
    (previous_token, duplicate_token, induction, locality), as TransformerLens's
    ``exclude_bos``/``exclude_current_token`` do. ``exclude_first``/``exclude_current`` are
    the old spellings. `rows` (query positions, default all) limits the means to those rows,
    e.g. the tokens a model generated; the keys they look at are still every key.
    """
    if exclude_first is not None:
        deprecated("head_scores(exclude_first=)", "ignore_first=")
        ignore_first = exclude_first
    if exclude_current is not None:
        deprecated("head_scores(exclude_current=)", "ignore_current=")
        ignore_current = exclude_current
    if isinstance(locality_k, bool) or not isinstance(locality_k, (int, np.integer)) or (
        locality_k < 0
    ):
        raise AttnmapError(f"locality_k must be a whole number ≥ 0 (not {locality_k!r})")
    name = self_stack_name(run, stack, "head scores")
    st = run.stack(name)
    tokens = run.query_tokens(name)
    n = len(tokens)
    idx = np.arange(n)
    only = np.ones(n, dtype=bool)  # [query] rows the means run over
    if rows is not None:
        picked = np.asarray(rows, dtype=np.int64).reshape(-1)
        if picked.size and (picked.min() < 0 or picked.max() >= n):
            raise AttnmapError(f"rows must be query positions in 0..{n - 1}")
        only[:] = False
        only[picked] = True
    excluded = np.zeros((n, n), dtype=bool)  # [query, key] cells taken out of pattern scores
    if ignore_first:
        excluded[:, 0] = True
    if ignore_current:
        excluded[idx, idx] = True
    special_cols = np.array([t.special for t in tokens], dtype=bool)
    pairs = copy_pairs(token_keys(tokens))
    # Targets depend on the keys a layer may see: one setup per distinct layer mask.
    setups: dict[int, _Setup] = {}

    out: list[dict[str, Any]] = []
    for li in range(st.n_layers):
        mask = st.mask(li)
        if id(mask) not in setups:
            setups[id(mask)] = _Setup(np.asarray(mask, dtype=bool), excluded, pairs, locality_k,
                                      only)
        su = setups[id(mask)]
        allowed, dist, blocks = su.allowed, su.dist, su.blocks
        prev, local, dup, induct = su.prev, su.local, su.dup, su.induct
        self_rows, first_ok = su.self_rows, su.first_ok
        broad_rows, log_allowed = su.broad_rows, su.log_allowed
        a = run.layer(li, name)  # [head, query, key] float32
        h = a.shape[0]
        # Mass left for the pattern scores once the excluded cells are taken out: [head, query]
        kept = np.ones((h, n), dtype=np.float64)
        if ignore_first:
            kept -= a[:, :, 0]
        if ignore_current:
            diag = a[:, idx, idx].astype(np.float64)
            kept -= diag if not ignore_first else np.where(idx == 0, 0.0, diag)
        entropy_rows, distance_rows = _entropy_and_distance(a, allowed, dist, blocks)
        res: dict[str, np.ndarray] = {
            "self": _mean(a[:, self_rows, self_rows]),
            "previous_token": _pattern(prev, a, kept),
            # rows whose next token is a key they may see: none in a causal stack (None)
            "next_token": _mean(a[:, su.next_rows, su.next_rows + 1]),
            # only rows that could see the first token (a window hides it from later rows)
            "first_token": _mean(a[:, su.first_rows, 0]) if first_ok else _none(h),
            "duplicate_token": _pattern(dup, a, kept),
            "induction": _pattern(induct, a, kept),
            "locality": _pattern(local, a, kept),
            "mean_distance": _mean(distance_rows[:, su.only]),
            "entropy": _mean(entropy_rows[:, su.only]),
            "entropy_norm": _mean(entropy_rows[:, broad_rows] / log_allowed[broad_rows])
            if broad_rows.any() else _none(h),
            "special": _mean(a[:, :, special_cols].sum(axis=2, dtype=np.float64)[:, su.only]),
        }
        for hi in range(h):
            out.append({
                "layer": li,
                "head": hi,
                "scores": {k: _num(res[k][hi]) for k in SCORE_NAMES},
            })
    return out


class _Setup:
    """What the scores need to know about one layer mask: targets, distances, row blocks."""

    def __init__(self, masked: np.ndarray, excluded: np.ndarray,
                 pairs: tuple[np.ndarray, np.ndarray], locality_k: int,
                 only: np.ndarray) -> None:
        n = masked.shape[0]
        self.only = only  # [query] rows the means run over
        excluded = excluded | ~only[:, None]  # rows left out have no pattern targets
        allowed = ~masked  # [query, key]
        idx = np.arange(n)
        dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float32)  # [query, key]
        dist[masked] = 0.0
        self.allowed, self.dist = allowed, dist
        self.prev = _Targets(idx[1:], idx[1:] - 1, n, masked, excluded)
        band_q, band_k = np.nonzero((dist <= locality_k) & allowed)
        self.local = _Targets(band_q, band_k, n, masked, excluded)
        early, late = pairs
        self.dup = _Targets(late, early, n, masked, excluded)
        # Induction: query at a later copy attends to the token right after the earlier copy.
        self.induct = _Targets(late, early + 1, n, masked, excluded)
        n_allowed = allowed.sum(axis=1)  # [query]
        self.broad_rows = (n_allowed > 1) & only  # entropy_norm is undefined with one allowed key
        self.log_allowed = np.log(np.maximum(n_allowed, 1)).astype(np.float64)
        self.self_rows = idx[allowed[idx, idx] & only]
        nxt = allowed[idx[:-1], idx[:-1] + 1] & only[:-1] if n > 1 else np.zeros(0, bool)
        self.next_rows = idx[:-1][nxt] if n > 1 else idx[:0]
        self.first_rows = np.nonzero(allowed[:, 0] & only)[0]
        self.first_ok = bool(len(self.first_rows))
        self.blocks = _row_blocks(allowed)


def _row_blocks(allowed: np.ndarray, size: int = 128) -> list[tuple[int, int, int]]:
    """(first row, end row, key extent) per block of rows: causal rows skip the masked tail."""
    n_q, n_k = allowed.shape
    last = np.where(allowed.any(axis=1), n_k - np.argmax(allowed[:, ::-1], axis=1), 0)
    return [(r, min(r + size, n_q), int(last[r:r + size].max(initial=0)))
            for r in range(0, n_q, size)]


def _entropy_and_distance(
    a: np.ndarray, allowed: np.ndarray, dist: np.ndarray, blocks: list[tuple[int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row entropy (nats) and mean distance, ``[head, query]`` each.

    The log is the costliest step of the census; working in row blocks that stop at the last
    allowed key roughly halves it for causal runs. Masked cells count for nothing.
    """
    h, n_q, _ = a.shape
    ent = np.zeros((h, n_q), dtype=np.float64)
    far = np.zeros((h, n_q), dtype=np.float64)
    for r0, r1, ext in blocks:
        if ext == 0:
            continue
        sub = a[:, r0:r1, :ext]  # [head, rows, keys]
        ok = (sub > 0) & allowed[r0:r1, :ext]
        logs = np.log(sub, where=ok, out=np.zeros(sub.shape, dtype=np.float32))
        ent[:, r0:r1] = -np.einsum("hqk,hqk->hq", sub, logs)
        far[:, r0:r1] = np.einsum("hqk,qk->hq", sub, dist[r0:r1, :ext])
    return ent, far


def _pattern(t: _Targets, a: np.ndarray, kept: np.ndarray) -> np.ndarray:
    if len(t.rows) == 0:
        return _none(a.shape[0])
    mass = t.row_mass(a)  # [head, row]
    left = kept[:, t.rows]
    ok = left > 1e-9  # rows whose attention all went to excluded cells do not count
    frac = np.divide(mass, left, out=np.zeros_like(mass), where=ok)
    counts = ok.sum(axis=1)
    return np.where(counts > 0, frac.sum(axis=1) / np.maximum(counts, 1), np.nan)


def _mean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis (rows); NaN when there are no rows."""
    if x.shape[-1] == 0:
        return _none(x.shape[0])
    means: np.ndarray = x.mean(axis=-1, dtype=np.float64)  # [head]
    return means


def _none(h: int) -> np.ndarray:
    return np.full(h, np.nan)


def _num(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def scores_array(entries: list[dict[str, Any]], name: str) -> np.ndarray:
    """One score as ``[layer, head]`` (NaN where undefined), for sorting and plotting."""
    layers = 1 + max(e["layer"] for e in entries)
    heads = 1 + max(e["head"] for e in entries)
    out = np.full((layers, heads), np.nan)
    for e in entries:
        v = e["scores"][name]
        out[e["layer"], e["head"]] = np.nan if v is None else v
    return out
