"""The corpus census report: one offline page from a census folder (``attnmap census -o``).

A layers × heads heatmap per score (hover: the mean and its 95% interval), the top heads per
score, and for a chosen head its score over documents (a histogram) and the documents where
it scores highest and lowest; documents captured for the report open their attention page
(the standalone viewer page, embedded). Everything the page shows travels as JSON in a
``<script type="application/json">`` (``<`` escaped) and is put on the page with
``textContent``: document text is data, never markup.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import AttnmapError
from .._io import atomic_path
from ..analysis.corpus import extremes, histogram
from ..analysis.scores import SCORE_NAMES

EXTREMES = 5


def read_census(outdir: str | os.PathLike[str]) -> tuple[dict[str, Any], Any, Any]:
    """(summary, heads table, docs table) of a census folder."""
    import pyarrow.parquet as pq

    d = Path(outdir).expanduser()
    need = [d / n for n in ("summary.json", "heads.parquet", "docs.parquet")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise AttnmapError(f"{str(d)!r} is not a finished census ({', '.join(missing)} "
                           "missing); run `attnmap census … -o` on it first")
    try:
        summary = json.loads(need[0].read_text("utf-8"))
        heads = pq.read_table(need[1])
        docs = pq.read_table(need[2])
    except Exception as exc:
        raise AttnmapError(f"cannot read the census in {str(d)!r}: "
                           f"{str(exc).splitlines()[0]}") from None
    return summary, heads, docs


def report_data(outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the report page shows, as JSON-ready data."""
    summary, heads, docs = read_census(outdir)
    where = dict(zip(docs["doc"].to_pylist(), docs["where"].to_pylist()))
    preview = dict(zip(docs["doc"].to_pylist(), docs["preview"].to_pylist()))
    stack = heads["stack"].to_numpy(zero_copy_only=False)
    layer = heads["layer"].to_numpy()
    head = heads["head"].to_numpy()
    doc = heads["doc"].to_numpy()
    values = {n: heads[n].to_numpy(zero_copy_only=False).astype(np.float64)
              for n in SCORE_NAMES}
    detail = []
    shown: set[int] = set()
    for h in summary["heads"]:
        sel = (stack == h["stack"]) & (layer == h["layer"]) & (head == h["head"])
        per: dict[str, Any] = {}
        for n in SCORE_NAMES:
            v = values[n][sel]
            top, low = extremes(doc[sel], v, EXTREMES)
            shown.update(d for d, _ in top + low)
            per[n] = {"hist": histogram(v, 20), "top": top, "low": low}
        detail.append(per)
    return {
        "model": summary["model"], "docs": summary["docs"], "tokens": summary["tokens"],
        "skipped": summary["skipped"], "scores": list(SCORE_NAMES), "heads": summary["heads"],
        "detail": detail,
        "documents": {str(d): {"where": where.get(d, ""), "preview": preview.get(d, "")}
                      for d in sorted(shown)},
    }


def pick_documents(data: dict[str, Any], k: int = 3) -> list[int]:
    """The documents worth embedding: the highest-scoring one of each score's top head."""
    out: list[int] = []
    for n in data["scores"]:
        ranked = [(h["scores"][n]["mean"], i) for i, h in enumerate(data["heads"])
                  if h["scores"].get(n)]
        if not ranked:
            continue
        _, i = max(ranked)
        top = data["detail"][i][n]["top"]
        if top and top[0][0] not in out:
            out.append(top[0][0])
        if len(out) >= k:
            break
    return out


def _template() -> str:
    from importlib import resources

    return resources.files("attnmap.viewer").joinpath("static", "census.html").read_text("utf-8")



def census_page(data: dict[str, Any], pages: dict[int, str] | None = None) -> str:
    """The report page for `data` (:func:`report_data`), with `pages` (document → the
    standalone attention page of that document) embedded."""
    payload = dict(data, pages={str(k): v for k, v in (pages or {}).items()})
    text = json.dumps(payload, allow_nan=False)
    # never a `</script` or `<!--` inside the data element: every < is escaped in JSON
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _template().replace("__DATA__", text)


def census_html(outdir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None,
                *, pages: dict[int, str] | None = None) -> str:
    """The report of the census in `outdir`; written to `path` when given."""
    html = census_page(report_data(outdir), pages)
    if path is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(html, encoding="utf-8")
    return html
