"""Per-head scores: one number per head for each kind of pattern people look for.

All scores are means over the rows (queries) that have something to score; a row whose target
set is empty (row 0 has no previous token; a token with no earlier copy has no induction
target) does not count. Masked cells (``stack.masked``) are not keys. Definitions and sources
are in ``docs/reading.md``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .._errors import AttnmapError, deprecated
from .._parallel import map_threads
from ..qkweights import Scratch
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
    return head_score_parts(run, stack=stack, ignore_first=ignore_first,
                            ignore_current=ignore_current, locality_k=locality_k,
                            rows=rows).entries()


class ScoreParts:
    """Each score's numerator and row count per head, so that means over many rows — of one
    long text read in blocks, or of a whole corpus — weight every row alike.

    ``sums[name]`` and ``counts[name]`` are ``[layer, head]`` (float64 and int64); a score's
    value is ``sums / counts``, undefined where ``counts`` is 0. Parts of different texts
    over the same model add up with ``+``.
    """

    def __init__(self, stack: str, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray]
                 ) -> None:
        self.stack = stack
        self.sums = sums
        self.counts = counts

    @property
    def shape(self) -> tuple[int, int]:
        layers, heads = self.sums[SCORE_NAMES[0]].shape
        return int(layers), int(heads)

    def means(self) -> dict[str, np.ndarray]:
        """Each score as ``[layer, head]``, NaN where no row had a target."""
        out: dict[str, np.ndarray] = {}
        for name in SCORE_NAMES:
            c = self.counts[name]
            out[name] = np.divide(self.sums[name], c, out=np.full(c.shape, np.nan),
                                  where=c > 0)
        return out

    def entries(self) -> list[dict[str, Any]]:
        """The scores as :func:`head_scores` gives them."""
        means = self.means()
        layers, heads = self.shape
        return [{"layer": li, "head": hi,
                 "scores": {k: _num(means[k][li, hi]) for k in SCORE_NAMES}}
                for li in range(layers) for hi in range(heads)]

    def __add__(self, other: ScoreParts) -> ScoreParts:
        if self.shape != other.shape or self.stack != other.stack:
            raise AttnmapError(
                f"score parts of {self.stack} {self.shape} and {other.stack} {other.shape} do "
                "not add up: they come from different models or stacks")
        return ScoreParts(self.stack, {k: self.sums[k] + other.sums[k] for k in SCORE_NAMES},
                          {k: self.counts[k] + other.counts[k] for k in SCORE_NAMES})


def head_score_parts(
    run: AttentionRun,
    *,
    stack: str | None = None,
    ignore_first: bool = False,
    ignore_current: bool = False,
    locality_k: int = 2,
    rows: Any = None,
    progress: Any = None,
    block_bytes: int = 16 << 20,
) -> ScoreParts:
    """The census as sums and row counts (:class:`ScoreParts`); :func:`head_scores` divides.

    Computed a block of query rows at a time over only the keys the layer's mask lets those
    rows see, so a long run stored as queries and keys never holds a whole head's matrix:
    memory is about `block_bytes` whatever the length. `progress`, if given, is called as
    ``progress(done, total)`` after each block of rows of each layer.
    """
    if isinstance(locality_k, bool) or not isinstance(locality_k, (int, np.integer)) or (
        locality_k < 0
    ):
        raise AttnmapError(f"locality_k must be a whole number ≥ 0 (not {locality_k!r})")
    name = self_stack_name(run, stack, "head scores")
    st = run.stack(name)
    tokens = run.query_tokens(name)
    n = len(tokens)
    only = np.ones(n, dtype=bool)  # [query] rows the means run over
    if rows is not None:
        picked = np.asarray(rows, dtype=np.int64).reshape(-1)
        if picked.size and (picked.min() < 0 or picked.max() >= n):
            raise AttnmapError(f"rows must be query positions in 0..{n - 1}")
        only[:] = False
        only[picked] = True
    special_cols = np.nonzero([t.special for t in tokens])[0]
    pairs = copy_pairs(token_keys(tokens))
    n_layers, n_heads = st.n_layers, st.n_heads
    sums = {k: np.zeros((n_layers, n_heads), dtype=np.float64) for k in SCORE_NAMES}
    counts = {k: np.zeros((n_layers, n_heads), dtype=np.int64) for k in SCORE_NAMES}
    rule = _Rule(only, ignore_first, ignore_current)
    setups: dict[int, _Setup] = {}  # targets depend on the keys a layer may see
    step = max(1, int(block_bytes // max(1, 4 * n_heads * max(n, 1))))
    for li in range(n_layers):
        mask = st.mask(li)
        if id(mask) not in setups:
            setups[id(mask)] = _Setup(np.asarray(mask, dtype=bool), rule, pairs, locality_k,
                                      step)
    total = n_layers * max(1, -(-n // step))
    done = [0]
    lock = threading.Lock()

    # Jobs of (layer, every W-th block of rows) on one thread per core: interleaved, as a
    # causal block's keys grow down the matrix; the jobs of a layer add up.
    ways = max(1, os.cpu_count() or 1)

    def job(which: tuple[int, int]) -> _Accumulator:
        li, part = which
        su = setups[id(st.mask(li))]
        acc = _Accumulator(n_heads)
        scratch = Scratch()  # this job's block memory, reused block after block
        for r0, r1, k0, k1 in su.blocks[part::ways]:
            if k1 > k0:
                a, ent = st.rows(li, r0, r1, k0, k1, entropy=True, scratch=scratch)
                _score_block(acc, a, ent, su, rule, r0, k0, special_cols)
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0], total)
        return acc

    jobs = [(li, part) for li in range(n_layers) for part in range(ways)]
    for (li, _), acc in zip(jobs, map_threads(job, jobs)):
        for k in SCORE_NAMES:
            sums[k][li] += acc.sums[k]
            counts[k][li] += acc.counts[k]
    return ScoreParts(name, sums, counts)


class _Rule:
    """Which rows count and which cells the pattern scores leave out."""

    def __init__(self, only: np.ndarray, ignore_first: bool, ignore_current: bool) -> None:
        self.only = only  # [query] rows the means run over
        self.ignore_first = ignore_first
        self.ignore_current = ignore_current

    def excluded(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Pairs (query, key) taken out of the pattern scores."""
        out: np.ndarray = ~self.only[q]
        if self.ignore_first:
            out |= k == 0
        if self.ignore_current:
            out |= k == q
        return out


class _Targets:
    """A sparse target set: (query, key) pairs, sorted by query for fast row sums."""

    def __init__(self, q: np.ndarray, k: np.ndarray, masked: np.ndarray, rule: _Rule) -> None:
        q, k = np.asarray(q, dtype=np.int64), np.asarray(k, dtype=np.int64)
        keep = ~masked[q, k] & ~rule.excluded(q, k) if len(q) else np.zeros(0, bool)
        q, k = q[keep], k[keep]
        order = np.lexsort((k, q))
        self.q, self.k = q[order], k[order]

    def within(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The pairs whose query is in ``r0:r1``: (query, key, rows with a target, starts)."""
        lo, hi = np.searchsorted(self.q, [r0, r1])
        q, k = self.q[lo:hi], self.k[lo:hi]
        rows, starts = np.unique(q, return_index=True)
        return q, k, rows, starts


class _Setup:
    """What the scores need to know about one layer mask: targets, rows, blocks of rows."""

    def __init__(self, masked: np.ndarray, rule: _Rule, pairs: tuple[np.ndarray, np.ndarray],
                 locality_k: int, step: int) -> None:
        n = masked.shape[0]
        only = rule.only
        idx = np.arange(n)
        live = np.logical_not(masked.all(axis=1))  # [query] rows that see some key
        first_key = np.where(live, np.argmin(masked, axis=1), 0)
        end_key = np.where(live, n - np.argmin(masked[:, ::-1], axis=1), 0)
        self.masked = masked
        self.prev = _Targets(idx[1:], idx[1:] - 1, masked, rule)
        band = [(idx[max(0, -d):n - max(0, d)], d) for d in range(-locality_k, locality_k + 1)]
        self.local = _Targets(np.concatenate([q for q, _ in band]),
                              np.concatenate([q + d for q, d in band]), masked, rule)
        early, late = pairs
        self.dup = _Targets(late, early, masked, rule)
        # Induction: query at a later copy attends to the token right after the earlier copy.
        self.induct = _Targets(late, early + 1, masked, rule)
        n_allowed = (~masked).sum(axis=1)  # [query]
        self.broad = (n_allowed > 1) & only  # entropy_norm is undefined with one allowed key
        self.log_allowed = np.log(np.maximum(n_allowed, 1)).astype(np.float64)
        self.self_ok = ~masked[idx, idx] & only
        self.next_ok = np.zeros(n, dtype=bool)
        if n > 1:
            self.next_ok[:-1] = ~masked[idx[:-1], idx[:-1] + 1] & only[:-1]
        self.first_ok = ~masked[:, 0] & only if n else np.zeros(0, bool)
        # Blocks of rows, each over the span of keys its rows may see: a causal block skips
        # the future, a sliding-window block what its window has left behind.
        self.blocks: list[tuple[int, int, int, int]] = []
        for r0 in range(0, n, step):
            r1 = min(r0 + step, n)
            seen = live[r0:r1]
            k0 = int(first_key[r0:r1][seen].min()) if seen.any() else 0
            k1 = int(end_key[r0:r1][seen].max()) if seen.any() else 0
            self.blocks.append((r0, r1, k0, k1))


class _Accumulator:
    """Running sums and counts of one layer's scores, ``[head]`` each."""

    def __init__(self, heads: int) -> None:
        self.sums = {k: np.zeros(heads, dtype=np.float64) for k in SCORE_NAMES}
        self.counts = {k: np.zeros(heads, dtype=np.int64) for k in SCORE_NAMES}

    def add_rows(self, name: str, per_row: np.ndarray) -> None:
        """Add ``[head, row]`` values, each row counting once."""
        self.sums[name] += per_row.sum(axis=1, dtype=np.float64)
        self.counts[name] += per_row.shape[1]


def _score_block(acc: _Accumulator, a: np.ndarray, ent: np.ndarray, su: _Setup, rule: _Rule,
                 r0: int, k0: int, special_cols: np.ndarray) -> None:
    """Add one block of rows ``a`` ``[head, row, key]`` (its keys start at `k0`) and their
    entropies ``ent`` ``[head, row]``."""
    _, nr, nk = a.shape
    rows = np.arange(r0, r0 + nr)
    sel = rows[su.self_ok[r0:r0 + nr]]
    acc.add_rows("self", a[:, sel - r0, sel - k0])
    sel = rows[su.next_ok[r0:r0 + nr]]
    acc.add_rows("next_token", a[:, sel - r0, sel + 1 - k0])
    sel = rows[su.first_ok[r0:r0 + nr]]  # only rows that could see the first token
    acc.add_rows("first_token", a[:, sel - r0, 0] if len(sel) else a[:, :0, 0])
    # Mass left for the pattern scores once the excluded cells are taken out: [head, row]
    kept = np.ones((a.shape[0], nr), dtype=np.float64)
    if rule.ignore_first and k0 == 0:
        kept -= a[:, :, 0]
    if rule.ignore_current:
        on = (rows >= k0) & (rows < k0 + nk)
        if rule.ignore_first:
            on &= rows != 0
        kept[:, on] -= a[:, rows[on] - r0, rows[on] - k0]
    for name, t in (("previous_token", su.prev), ("duplicate_token", su.dup),
                    ("induction", su.induct), ("locality", su.local)):
        q, k, trows, starts = t.within(r0, r0 + nr)
        if len(q) == 0:
            continue
        vals = a[:, q - r0, k - k0].astype(np.float64)  # [head, pair]
        mass = np.add.reduceat(vals, starts, axis=1)  # [head, row with a target]
        left = kept[:, trows - r0]
        ok = left > 1e-9  # rows whose attention all went to excluded cells do not count
        acc.sums[name] += np.divide(mass, left, out=np.zeros_like(mass), where=ok).sum(axis=1)
        acc.counts[name] += ok.sum(axis=1)
    only = rule.only[r0:r0 + nr]
    if not only.any():
        return
    sub = a if only.all() else a[:, only]  # [head, row, key]
    sel = rows[only]
    ent = ent[:, only]  # [head, row] nats
    dist = np.abs(sel[:, None] - np.arange(k0, k0 + nk)[None, :]).astype(np.float32)
    acc.add_rows("mean_distance", np.einsum("hqk,qk->hq", sub, dist))
    acc.add_rows("entropy", ent)
    broad = su.broad[sel]
    acc.add_rows("entropy_norm", ent[:, broad] / su.log_allowed[sel[broad]])
    cols = special_cols[(special_cols >= k0) & (special_cols < k0 + nk)] - k0
    acc.add_rows("special", sub[:, :, cols].sum(axis=2, dtype=np.float64))


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
