"""Relation queries: how much does one word attend to another, in every head?"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import AttnmapError
from ..run import AttentionRun
from .scores import self_stack_name
from .words import find_word


def relate(
    run: AttentionRun,
    from_: str,
    to: str,
    vs: str | None = None,
    *,
    stack: str | None = None,
) -> dict[str, Any]:
    """Attention from the word `from_` to `to` (and to `vs`) in every head, best heads first.

    Words are found through the tokens' character offsets: a word spanning several tokens is
    summed over its key tokens and averaged over its query tokens. ``mat#2`` names the second
    occurrence; without ``#`` the first is used and ``ambiguous`` says whether there were more.
    Heads are ranked by ``to − vs`` (or by ``to`` alone without `vs`).
    """
    name = self_stack_name(run, stack, "relate")
    if name not in ("self", "encoder"):
        raise AttnmapError(
            f"relate finds words through the input text's offsets; stack {name!r} reads the "
            "decoder tokens, which have none; use --stack encoder"
        )
    st = run.stack(name)
    src = find_word(run, from_, "--from")
    dst = find_word(run, to, "--to")
    alt = find_word(run, vs, "--vs") if vs is not None else None
    q = np.asarray(src["tokens"])
    notes: list[str] = []
    for label, w in (("--from", src), ("--to", dst), ("--vs", alt)):
        if w is not None and w["ambiguous"]:
            notes.append(
                f"{label} {w['word']!r} occurs {w['occurrences']} times; using the first "
                f"(write {w['word']}#2 … for another)"
            )
    for label, w in (("--to", dst), ("--vs", alt)):
        if w is None:
            continue
        blocked = st.masked_everywhere()[np.ix_(q, np.asarray(w["tokens"]))]
        if blocked.all():
            notes.append(
                f"{w['word']!r} ({label}) comes after {src['word']!r} and this model cannot "
                "attend forward, so its attention is 0 in every head"
            )

    r0, r1 = int(q.min()), int(q.max()) + 1  # the rows of the --from word, read alone

    def mass(w: dict[str, Any], a: np.ndarray, mask: np.ndarray) -> np.ndarray:
        k = np.asarray(w["tokens"])
        cells = np.where(np.asarray(mask)[np.ix_(q, k)], 0.0, a[:, q - r0][:, :, k])
        per_head: np.ndarray = cells.astype(np.float64).sum(axis=2).mean(axis=1)  # [head]
        return per_head

    rows: list[dict[str, Any]] = []
    for li in range(st.n_layers):
        a = st.rows(li, r0, r1)  # [head, row, key]: a long run never computes its other rows
        to_m = mass(dst, a, st.mask(li))
        vs_m = mass(alt, a, st.mask(li)) if alt is not None else None
        for hi in range(a.shape[0]):
            row: dict[str, Any] = {"layer": li, "head": hi, "to": float(to_m[hi])}
            if vs_m is not None:
                row["vs"] = float(vs_m[hi])
                row["diff"] = float(to_m[hi] - vs_m[hi])
            rows.append(row)
    key = "diff" if alt is not None else "to"
    rows.sort(key=lambda r: (-r[key], r["layer"], r["head"]))
    return {
        "stack": name,
        "from": _word_info(run, src),
        "to": _word_info(run, dst),
        "vs": _word_info(run, alt) if alt is not None else None,
        "ranked_by": "to - vs" if alt is not None else "to",
        "heads": rows,
        "notes": notes,
    }


def _word_info(run: AttentionRun, w: dict[str, Any]) -> dict[str, Any]:
    return {
        "word": w["word"],
        "occurrence": w["occurrence"],
        "occurrences": w["occurrences"],
        "ambiguous": w["ambiguous"],
        "tokens": [int(i) for i in w["tokens"]],
        "token_text": [run.tokens[i].text for i in w["tokens"]],
    }
