"""Compare two runs: two texts through one model, or one text through two models.

Tokens are aligned first (identical sequences one to one; otherwise equal tokens paired in
their longest common subsequence, then the substitutions between them: see
:func:`align_changes`; words instead of tokens in the word view). Each head is then scored by
how much its pattern changed over the aligned cells, substituted positions included:

* ``mean_abs``: mean |A − B| over cells that neither run masks;
* ``js``: mean over query rows of the Jensen–Shannon divergence (base 2, so 0…1) between the
  two rows, each renormalised over the aligned keys.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import AttnmapError, deprecated
from .run import STACK_SIDES, AttentionRun, AttentionStack
from .tokens import Token

MIN_ALIGNED = 0.5  # below this share of the shorter sequence, alignment is refused


@dataclass
class Diff:
    a: AttentionRun
    b: AttentionRun
    stack: str
    ia: np.ndarray  # [aligned] positions in a
    ib: np.ndarray  # [aligned] positions in b
    ranking: list[dict[str, Any]] = field(default_factory=list)  # most changed first
    # [aligned] True where the pair is a substitution (a's token differs from b's), False
    # where the tokens are equal; left out: every pair equal
    changed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.changed = np.asarray(self.changed, dtype=bool)
        if self.changed.size == 0:
            self.changed = np.zeros(len(self.ia), dtype=bool)
        if self.changed.shape != np.shape(self.ia):
            raise AttnmapError(f"changed must have one flag per aligned position "
                               f"({len(self.ia)}, not {self.changed.shape})")

    @property
    def tokens(self) -> list[Token]:
        """Run a's tokens at the aligned positions (of the compared stack)."""
        toks = self.a.query_tokens(self.stack)
        return [toks[i] for i in self.ia]

    @property
    def tokens_b(self) -> list[Token]:
        """Run b's tokens at the aligned positions (of the compared stack)."""
        toks = self.b.query_tokens(self.stack)
        return [toks[i] for i in self.ib]

    @property
    def labels(self) -> list[str]:
        """One label per aligned position: the token's text, or ``"keys→key"`` (a's text,
        then b's) where the pair is a substitution."""
        return [f"{ta.text}→{tb.text}" if c else ta.text
                for ta, tb, c in zip(self.tokens, self.tokens_b, self.changed.tolist())]

    def matrices(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
        """A, B and A − B on the aligned tokens ``[query, key]``, and the mask of either."""
        la, ha = self.a.layer_index(layer, self.stack), self.a.head_index(head, self.stack)
        a = self.a.head(la, ha, self.stack)[np.ix_(self.ia, self.ia)]
        b = self.b.head(la, ha, self.stack)[np.ix_(self.ib, self.ib)]
        masked = (self.a.stack(self.stack).mask(la)[np.ix_(self.ia, self.ia)]
                  | self.b.stack(self.stack).mask(la)[np.ix_(self.ib, self.ib)])
        return a, b, a - b, masked

    def aligned_run(self, side: str) -> AttentionRun:
        """Run ``"a"`` or ``"b"`` cut down to the compared stack and the aligned tokens."""
        if side == "a":
            return aligned_run(self.a, self.stack, self.ia)
        if side == "b":
            return aligned_run(self.b, self.stack, self.ib)
        raise AttnmapError(f"side must be 'a' or 'b' (not {side!r})")


def align(a: Sequence[Hashable], b: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of equal items in a longest common subsequence of `a` and `b`.

    Exact, and fast: the LCS table is kept as one bit vector per row (Hyyrö's bit-parallel
    LCS, Python integers as the vectors), so 1,024 tokens take milliseconds instead of the
    most of a second a Python table takes (bench/bench_diff.py). difflib's matching blocks
    are faster still but not an LCS: on repeated text (the repeat probe, a pasted paragraph)
    they pair a fraction of the tokens.
    """
    if list(a) == list(b):
        idx = np.arange(len(a))
        return idx, idx.copy()
    n, m = len(a), len(b)
    # bit k of masks[x]: b[m-1-k] == x (b reversed, so that rows count suffixes)
    masks: dict[Hashable, int] = {}
    for k, x in enumerate(reversed(b)):
        masks[x] = masks.get(x, 0) | (1 << k)
    full = (1 << m) - 1
    v = full
    rows = [v]  # rows[r]: zero bits count the LCS of a's last r items with b's last k
    for x in reversed(a):
        u = v & masks.get(x, 0)
        v = ((v + u) | (v - u)) & full
        rows.append(v)

    def suffix_lcs(i: int, j: int) -> int:  # LCS length of a[i:] and b[j:]
        k = m - j
        return k - (rows[n - i] & ((1 << k) - 1)).bit_count()

    ia: list[int] = []
    ib: list[int] = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            ia.append(i)
            ib.append(j)
            i += 1
            j += 1
        elif suffix_lcs(i + 1, j) >= suffix_lcs(i, j + 1):
            i += 1
        else:
            j += 1
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def align_changes(a: Sequence[Hashable], b: Sequence[Hashable]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned positions of `a` and `b` with substitutions: ``(ia, ib, changed)``.

    First the equal items of a longest common subsequence (exactly :func:`align`'s pairs);
    they are anchors. Between two consecutive anchors (or an anchor and either end) each
    sequence has a gap of unmatched items. Gaps of the same length are a substitution,
    paired in order, so the changed tokens keep their slot: "The keys to the cabinet are" /
    "The key to the cabinets is" pairs keys↔key, cabinet↔cabinets and are↔is besides the
    equal tokens. Gaps of different lengths are insertions and deletions and stay unpaired:
    pairing them by position would match tokens a reader does not see as counterparts
    ("the red cat" / "the very big cat" would pair red↔very), and when a tokenizer splits a
    word differently (cabinets / cabinet·s) no token-to-token pairing is right.

    `changed` is True for a substituted pair, False for an equal one; equal sequences give
    the identity with nothing changed. The anchors are :func:`align`'s LCS as it is: where a
    repeated token makes several LCSs (``p 0 0 y`` / ``q 0 z y``), the one it picks may leave
    gaps of different lengths (here the second 0 pairs; p·0 against q), and those stay
    unpaired.
    """
    ia_eq, ib_eq = align(a, b)
    n, m = len(a), len(b)
    ia: list[int] = []
    ib: list[int] = []
    changed: list[bool] = []
    pa = pb = -1  # the previous anchor
    for na, nb in [*zip(ia_eq.tolist(), ib_eq.tolist()), (n, m)]:
        ga, gb = na - pa - 1, nb - pb - 1  # gap lengths before this anchor (or the ends)
        if ga == gb and ga > 0:
            ia.extend(range(pa + 1, na))
            ib.extend(range(pb + 1, nb))
            changed.extend(a[i] != b[j] for i, j in zip(range(pa + 1, na), range(pb + 1, nb)))
        if na < n:
            ia.append(na)
            ib.append(nb)
            changed.append(False)
        pa, pb = na, nb
    return (np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64),
            np.array(changed, dtype=bool))


def _js_rows(p: np.ndarray, q: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Per-row JS divergence (bits) of `p` and `q` ``[query, key]`` over unmasked keys."""
    p = np.where(masked, 0.0, p).astype(np.float64)
    q = np.where(masked, 0.0, q).astype(np.float64)
    ps, qs = p.sum(-1, keepdims=True), q.sum(-1, keepdims=True)
    ok = (ps[:, 0] > 0) & (qs[:, 0] > 0)
    p = np.divide(p, ps, out=np.zeros_like(p), where=ps > 0)
    q = np.divide(q, qs, out=np.zeros_like(q), where=qs > 0)
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(x > 0, x * np.log2(np.where(x > 0, x, 1) / np.where(m > 0, m, 1)), 0.0)
        kl_rows: np.ndarray = t.sum(-1)  # [query]
        return kl_rows

    js = 0.5 * kl(p) + 0.5 * kl(q)
    rows: np.ndarray = np.clip(js[ok], 0.0, 1.0)  # [query]
    return rows


def compare(a: AttentionRun, b: AttentionRun, *, stack: str | None = None,
            words: bool = False, substitutions: bool = True) -> Diff:
    """Align `a` and `b` and rank every head by how much its attention changed.

    Substituted tokens (:func:`align_changes`) are compared like equal ones, in their slot;
    ``substitutions=False`` compares the equal tokens only. Alignment is refused when fewer
    than half the shorter sequence's tokens are equal."""
    if words:
        from .analysis import merge_words

        a, b = merge_words(a), merge_words(b)
    name = a.stack(stack).name
    sa, sb = a.stack(name), b.stack(name)
    if (sa.n_layers, sa.n_heads) != (sb.n_layers, sb.n_heads):
        raise AttnmapError(
            f"the runs have different shapes ({sa.n_layers}×{sa.n_heads} and "
            f"{sb.n_layers}×{sb.n_heads} layers × heads); compare models of one architecture"
        )
    if name == "cross" or sa.shape[2] != sa.shape[3]:
        raise AttnmapError("diff compares self-attention; pick --stack encoder or decoder")
    tokens_a = a.query_tokens(name)
    tokens_b = b.query_tokens(name)
    if words:
        keys_a: list[Hashable] = [t.text.lower() for t in tokens_a]
        keys_b: list[Hashable] = [t.text.lower() for t in tokens_b]
    else:
        keys_a = [t.id for t in tokens_a]
        keys_b = [t.id for t in tokens_b]
    ia, ib, changed = align_changes(keys_a, keys_b)
    if not substitutions:
        ia, ib, changed = ia[~changed], ib[~changed], changed[~changed]
    shorter = min(len(keys_a), len(keys_b))
    equal = int((~changed).sum())  # substitutions alone do not make two texts comparable
    if equal < max(1, MIN_ALIGNED * shorter):
        hint = "" if words else "; try the word view (--words)"
        raise AttnmapError(
            f"cannot align the two token sequences: only {equal} of {shorter} "
            f"{'words' if words else 'tokens'} match{hint}"
        )
    d = Diff(a=a, b=b, stack=name, ia=ia, ib=ib, changed=changed)
    ranking = []
    for li in range(sa.n_layers):
        la = a.layer(li, name)[:, ia][:, :, ia]  # [head, query, key] on aligned tokens
        lb = b.layer(li, name)[:, ib][:, :, ib]
        masked = sa.mask(li)[np.ix_(ia, ia)] | sb.mask(li)[np.ix_(ib, ib)]  # this layer's
        keep = ~masked
        for h in range(sa.n_heads):
            diff = np.abs(la[h] - lb[h])[keep]
            js = _js_rows(la[h], lb[h], masked)
            ranking.append({
                "layer": li,
                "head": h,
                "mean_abs": float(diff.mean()) if diff.size else 0.0,
                "js": float(js.mean()) if js.size else 0.0,
            })
    # most changed first; equal changes keep layer/head order
    ranking.sort(key=lambda r: (-r["js"], -r["mean_abs"], r["layer"], r["head"]))
    d.ranking = ranking
    return d


def aligned_run(run: AttentionRun, stack: str, idx: np.ndarray) -> AttentionRun:
    """`run` cut down to one stack and the aligned token positions `idx` (both axes)."""
    st = run.stack(stack)
    ix = np.asarray(idx, dtype=np.intp)
    layers = [run.layer(i, stack)[:, ix][:, :, ix] for i in range(st.n_layers)]  # [head, q, k]
    masks = [np.asarray(m, dtype=bool)[np.ix_(ix, ix)] for m in st.layer_masks]  # per layer
    cut = AttentionStack(stack, layers, masks[0], masks)
    toks = run.query_tokens(stack)
    kept = [toks[i] for i in ix]
    if STACK_SIDES[stack][0] == "target":
        return dataclasses.replace(run, target_tokens=kept, stacks={stack: cut}, extra={})
    return dataclasses.replace(run, tokens=kept, stacks={stack: cut}, extra={})


def figure(d: Diff, layer: int | None = None, head: int | None = None, *,
           values: bool | None = None) -> Any:
    """Deprecated: :func:`attnmap.plot.diff_figure`."""
    deprecated("attnmap.diff.figure", "attnmap.plot.diff_figure")
    plot = importlib.import_module("attnmap.plot")
    return plot.diff_figure(d, layer, head, values=values)
