"""The README's picture caption states numbers; each must be what the bundled model gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attnmap

README = Path(__file__).resolve().parents[2] / "README.md"


def _caption() -> str:
    text = README.read_text("utf-8")
    start = text.index("![The heatmap of layer 2, head 11")
    return " ".join(text[start:text.index("## ", start)].split())


def test_the_caption_describes_the_picture(minilm_run):
    caption = _caption()
    assert "layer 2, head 11" in caption and "--layer 2 --head 11" in README.read_text("utf-8")
    a = minilm_run.head(2, 11)  # [query, key]
    words = [t.text for t in minilm_run.tokens]
    pairs = re.findall(r"([^\s(]+) → (\S+) (0\.\d\d)", caption)
    assert len(pairs) >= 4, caption
    for q, k, value in pairs:
        i, j = words.index(q), words.index(k)
        assert round(float(a[i, j]), 2) == float(value), (q, k, float(a[i, j]))
        if k != "[CLS]":
            assert j == i - 1, f"{q} → {k} is not the token just before"
    (scores,) = [e["scores"] for e in attnmap.head_scores(minilm_run)
                 if (e["layer"], e["head"]) == (2, 11)]
    for name, value in re.findall(r"(previous_token|first_token) (0\.\d\d)", caption):
        assert round(scores[name], 2) == float(value), (name, scores[name])


@pytest.mark.parametrize("claim", ["right after them", "token after"])
def test_the_old_wrong_claim_is_gone(claim):
    assert claim not in _caption()
