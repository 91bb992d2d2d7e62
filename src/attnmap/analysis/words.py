"""Words: subword tokens merged back into the words people wrote, and words found by name.

A word is a maximal run of non-space characters. Tokens belong to one word when their
character spans touch (no whitespace between); tokens without offsets (decoder tokens,
probes) fall back to the tokenizer's own markers (``Ġ``/``▁`` start a word, ``##`` continues
one). Special tokens are always words of their own.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any

import numpy as np

from .._errors import AttnmapError
from ..run import STACK_SIDES, AttentionRun, AttentionStack
from ..tokens import Token, visible

_WORD_START = ("Ġ", "▁", "Ċ", " ", "\n", "\t")


def word_groups(tokens: list[Token]) -> list[list[int]]:
    """Token indexes grouped into words, in order."""
    groups: list[list[int]] = []
    wordpiece = any(t.raw.startswith("##") for t in tokens)
    prev: Token | None = None
    for i, t in enumerate(tokens):
        if t.special or prev is None or prev.special or not groups:
            new = True
        elif t.start is not None and prev.end is not None:
            new = t.start != prev.end
        elif wordpiece:
            new = not t.raw.startswith("##")
        else:
            new = t.raw.startswith(_WORD_START)
        if new:
            groups.append([i])
        else:
            groups[-1].append(i)
        prev = t
    return groups


def _word_token(tokens: list[Token], group: list[int], text: str | None) -> Token:
    parts = [tokens[i] for i in group]
    if len(parts) == 1:
        return parts[0]
    starts = [p.start for p in parts if p.start is not None]
    ends = [p.end for p in parts if p.end is not None]
    start: int | None
    end: int | None
    if text is not None and starts and len(starts) == len(parts):
        start, end = min(starts), max(ends)
        label = visible(text[start:end])
    else:
        start = min(starts) if starts else None
        end = max(ends) if ends else None
        label = "".join(
            p.text[2:] if k and p.raw.startswith("##") else p.text for k, p in enumerate(parts)
        )
    return Token(
        text=label or "∅",
        raw="".join(p.raw for p in parts),
        id=-1,  # a merged word has no vocabulary id; its raw string identifies it
        special=False,
        start=start,
        end=end,
    )


def _merge_matrix(groups: list[list[int]], n: int) -> np.ndarray:
    """One-hot membership ``[token, word]``."""
    g = np.zeros((n, len(groups)), dtype=np.float64)
    for w, members in enumerate(groups):
        g[members, w] = 1.0
    return g


def merge_words(run: AttentionRun) -> AttentionRun:
    """A new run whose tokens are words: sum over keys within a word, mean over queries.

    Rows still sum to 1. A word cell is masked only when every token cell in it is masked.
    """
    src_groups = word_groups(run.tokens)
    tgt_groups = word_groups(run.target_tokens) if run.target_tokens else None
    sides = {"source": src_groups, "target": tgt_groups}
    lengths = {"source": len(run.tokens), "target": len(run.target_tokens or [])}
    stacks: dict[str, AttentionStack] = {}
    for name, st in run.stacks.items():
        q_side, k_side = STACK_SIDES[name]
        gq = _merge_matrix(sides[q_side] or [], lengths[q_side])  # [query token, query word]
        gk = _merge_matrix(sides[k_side] or [], lengths[k_side])  # [key token, key word]
        mean_q = (gq / gq.sum(axis=0, keepdims=True)).T  # [query word, query token]
        layers = []
        for li in range(st.n_layers):
            a = run.layer(li, name).astype(np.float64)  # [head, query, key]
            a = np.where(st.mask(li), 0.0, a)
            merged = mean_q @ (a @ gk)  # [head, query word, key word]
            layers.append(merged.astype(np.float32))

        def word_mask(m: np.ndarray, gq: np.ndarray = gq, gk: np.ndarray = gk) -> np.ndarray:
            # [query word, key word]: masked where every token cell is masked
            masked: np.ndarray = (gq.T @ (~np.asarray(m, dtype=bool)).astype(np.float64) @ gk) == 0
            return masked

        per_layer = st.with_masks(word_mask)
        shared = word_mask(st.mask(0)) if per_layer is None else per_layer[0]
        stacks[name] = AttentionStack(name, layers, shared, per_layer)
    tokens = [_word_token(run.tokens, g, run.text) for g in src_groups]
    target_tokens = None
    if run.target_tokens is not None and tgt_groups is not None:
        target_tokens = [_word_token(run.target_tokens, g, run.target_text) for g in tgt_groups]
    model = dict(run.model)
    model["words"] = True
    extra = {k: v for k, v in run.extra.items() if not isinstance(v, np.ndarray)}
    extra["word_groups"] = src_groups
    return dataclasses.replace(
        run, tokens=tokens, target_tokens=target_tokens, stacks=stacks, model=model, extra=extra
    )


# --- finding a named word in the text ---------------------------------------------------------
def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith(("P", "S"))


def text_words(text: str) -> list[tuple[str, int, int]]:
    """Words of `text` as (folded word, start, end), punctuation stripped from both ends."""
    out = []
    for m in re.finditer(r"\S+", text):
        s, e = m.start(), m.end()
        while s < e and _is_punct(text[s]):
            s += 1
        while e > s and _is_punct(text[e - 1]):
            e -= 1
        if e > s:
            out.append((text[s:e].casefold(), s, e))
        else:  # a word that is all punctuation ("—", "...") is matched as written
            out.append((m.group().casefold(), m.start(), m.end()))
    return out


def find_word(run: AttentionRun, spec: str, what: str = "word") -> dict[str, Any]:
    """Tokens of the word `spec` (``mat`` or ``mat#2`` for the second occurrence)."""
    if not isinstance(spec, str) or not spec.strip():
        raise AttnmapError(f"the {what} word is empty; name a word of the text")
    word, occurrence = spec.strip(), 1
    m = re.fullmatch(r"(.+)#(\d+)", word)
    if m:
        word, occurrence = m.group(1), int(m.group(2))
        if occurrence < 1:
            raise AttnmapError(f"occurrences count from 1 ({spec!r}); write {m.group(1)}#1")
    folded = word.casefold()
    stripped = text_words(word)
    if len(stripped) == 1:
        folded = stripped[0][0]
    words = text_words(run.text)
    hits = [(s, e) for w, s, e in words if w == folded]
    if not hits:
        shown = list(dict.fromkeys(run.text[s:e] for _, s, e in words))
        listed = ", ".join(shown[:40]) + (" …" if len(shown) > 40 else "")
        raise AttnmapError(f"{what} word {word!r} is not in the text; its words are: {listed}")
    if occurrence > len(hits):
        raise AttnmapError(
            f"{what} word {word!r} occurs {len(hits)} time(s), so there is no #{occurrence}; "
            f"use {word}#1 … {word}#{len(hits)}"
        )
    s, e = hits[occurrence - 1]
    toks = [
        i for i, t in enumerate(run.tokens)
        if t.start is not None and t.end is not None and t.start < e and t.end > s
    ]
    if not toks:
        raise AttnmapError(
            f"{what} word {word!r} has no tokens in this run (was the text truncated, or do "
            "the tokens carry no character offsets?)"
        )
    return {
        "word": run.text[s:e],
        "occurrence": occurrence,
        "occurrences": len(hits),
        "ambiguous": len(hits) > 1 and not m,
        "start": s,
        "end": e,
        "tokens": toks,
    }
