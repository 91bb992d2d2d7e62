"""Corpus statistics of the head census: per-document rows, corpus means and their intervals.

A document's census is each score's numerator and row count per head (:class:`ScoreParts`);
the corpus mean of a score is the sum of numerators over the sum of rows, so every row of
every document weighs the same (averaging per-document means would weight a 5-token text
like a 500-token one). numpy only: the capture layer reads and writes the files.

The interval (``ci95``) is the delta-method interval of a ratio estimator with documents as
clusters: with ``y_d`` a document's numerator, ``x_d`` its rows and ``R = Σy / Σx``,
``Var(R) ≈ n/(n−1) · Σ (y_d − R·x_d)² / (Σx)²`` over the ``n`` documents that have rows for
the score, and ``ci95 = R ± 1.96·√Var``. It is null when fewer than two documents have rows.
Its sums add up shard by shard (two passes: Σy and Σx, then Σ(y − R·x)²), so a summary of
millions of documents never holds them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .scores import SCORE_NAMES, ScoreParts

KEYS = ("doc", "stack", "layer", "head")
Z95 = 1.959963984540054  # the 97.5% point of the standard normal


def columns() -> list[str]:
    """The columns of ``heads.parquet``, in order."""
    out = list(KEYS)
    for name in SCORE_NAMES:
        out += [name, f"{name}_sum", f"{name}_rows"]
    return out


def doc_rows(doc: int, parts: ScoreParts) -> dict[str, np.ndarray]:
    """One document's rows: one per layer × head, every score's value, numerator and rows.

    A value is NaN where the document has no row with a target for the score.
    """
    layers, heads = parts.shape
    n = layers * heads
    means = parts.means()
    out: dict[str, np.ndarray] = {
        "doc": np.full(n, doc, dtype=np.int64),
        "stack": np.array([parts.stack] * n, dtype=object),
        "layer": np.repeat(np.arange(layers, dtype=np.int32), heads),
        "head": np.tile(np.arange(heads, dtype=np.int32), layers),
    }
    for name in SCORE_NAMES:
        out[name] = means[name].reshape(n).astype(np.float64)  # [layer·head]
        out[f"{name}_sum"] = parts.sums[name].reshape(n).astype(np.float64)
        out[f"{name}_rows"] = parts.counts[name].reshape(n).astype(np.int64)
    return out


def concat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of column tables."""
    if not tables:
        raise ValueError("no tables to concatenate")
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


class CorpusSums:
    """Per head (stack, layer, head) and score: Σy, Σx, documents with rows, Σ(y − R·x)².

    Two passes over the rows of ``heads.parquet`` (any documents, any order; each document
    once): :meth:`add` every table, then :meth:`add_spread` every table again (the spread
    about the corpus mean ``R``, summed directly: no cancellation); :meth:`summary_heads`
    gives the corpus means and intervals.
    """

    _FIELDS = ("y", "x", "n", "ss")

    def __init__(self) -> None:
        self.heads: dict[tuple[str, int, int], int] = {}
        self.acc: dict[str, dict[str, np.ndarray]] = {
            name: {f: np.zeros(0, dtype=np.float64) for f in self._FIELDS}
            for name in SCORE_NAMES}

    def _index(self, table: dict[str, np.ndarray]) -> np.ndarray:
        idx = np.empty(len(table["doc"]), dtype=np.int64)
        for i, key in enumerate(zip(table["stack"].tolist(), table["layer"].tolist(),
                                    table["head"].tolist())):
            k = (str(key[0]), int(key[1]), int(key[2]))
            if k not in self.heads:
                self.heads[k] = len(self.heads)
            idx[i] = self.heads[k]
        size = len(self.heads)
        for per in self.acc.values():
            for f in self._FIELDS:
                if per[f].size < size:
                    per[f] = np.concatenate([per[f], np.zeros(size - per[f].size)])
        return idx

    def _scores(self, table: dict[str, np.ndarray]
                ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                    int]]:
        """Per score of a shard's rows: (its sums, head index, numerators y, rows x, heads)."""
        if not len(table["doc"]):
            return
        idx = self._index(table)
        size = len(self.heads)
        for name in SCORE_NAMES:
            y = np.asarray(table[f"{name}_sum"], dtype=np.float64)
            x = np.asarray(table[f"{name}_rows"], dtype=np.float64)
            yield self.acc[name], idx, y, x, size

    def add(self, table: dict[str, np.ndarray]) -> None:
        """First pass: numerators, rows and documents with rows."""
        for per, idx, y, x, size in self._scores(table):
            per["y"] += np.bincount(idx, weights=y, minlength=size)
            per["x"] += np.bincount(idx, weights=x, minlength=size)
            per["n"] += np.bincount(idx, weights=(x > 0).astype(np.float64), minlength=size)

    def add_spread(self, table: dict[str, np.ndarray]) -> None:
        """Second pass: Σ (y − R·x)² with R the corpus mean from the first pass."""
        for per, idx, y, x, size in self._scores(table):
            d = np.where(x > 0, y - np.nan_to_num(_mean(per)[idx]) * x, 0.0)
            per["ss"] += np.bincount(idx, weights=d * d, minlength=size)

    def summary_heads(self) -> list[dict[str, Any]]:
        """``[{"stack", "layer", "head", "scores": {name: {"mean", "ci95"} | None}}]``,
        sorted by stack, layer and head."""
        stats = {name: _ratio_interval(self.acc[name]) for name in SCORE_NAMES}
        out = []
        for key in sorted(self.heads):
            i = self.heads[key]
            scores: dict[str, Any] = {}
            for name in SCORE_NAMES:
                mean, low, high = (float(a[i]) for a in stats[name])
                if np.isnan(mean):
                    scores[name] = None
                else:
                    ci = None if np.isnan(low) else [low, high]
                    scores[name] = {"mean": mean, "ci95": ci}
            out.append({"stack": key[0], "layer": key[1], "head": key[2], "scores": scores})
        return out


def _mean(per: dict[str, np.ndarray]) -> np.ndarray:
    y, x = per["y"], per["x"]
    out = np.full(x.shape, np.nan)
    np.divide(y, x, out=out, where=x > 0)
    return out


def _ratio_interval(per: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) per head; NaN mean without rows, NaN bounds under two documents."""
    x, n = per["x"], per["n"]
    r = _mean(per)
    var = np.full(x.shape, np.nan)
    ok = (n > 1) & (x > 0)
    var[ok] = n[ok] / (n[ok] - 1) * per["ss"][ok] / (x[ok] * x[ok])
    half = Z95 * np.sqrt(var)
    return r, r - half, r + half


def ratio_ci95(sums: np.ndarray, rows: np.ndarray) -> tuple[float, float, float]:
    """The corpus mean and delta-method interval of one head's score from per-document
    numerators and row counts (the same numbers :class:`CorpusSums` gives)."""
    y = np.asarray(sums, dtype=np.float64)
    x = np.asarray(rows, dtype=np.float64)
    r = y.sum() / x.sum() if x.sum() > 0 else np.nan
    d = np.where(x > 0, y - np.nan_to_num(r) * x, 0.0)
    per = {"y": np.array([y.sum()]), "x": np.array([x.sum()]),
           "n": np.array([float((x > 0).sum())]), "ss": np.array([(d * d).sum()])}
    r, lo, hi = _ratio_interval(per)
    return float(r[0]), float(lo[0]), float(hi[0])


def histogram(values: np.ndarray, bins: int = 30) -> dict[str, Any]:
    """Counts of the finite `values` in `bins` equal bins: ``{"edges": […], "counts": […]}``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"edges": [], "counts": []}
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1e-9
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def extremes(docs: np.ndarray, values: np.ndarray, k: int = 5
             ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The `k` documents with the highest and the lowest finite value: [(doc, value)]."""
    d = np.asarray(docs, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    d, v = d[ok], v[ok]
    order = np.lexsort((d, -v))  # highest first, ties by document
    top = [(int(d[i]), float(v[i])) for i in order[:k]]
    order = np.lexsort((d, v))
    low = [(int(d[i]), float(v[i])) for i in order[:k]]
    return top, low
