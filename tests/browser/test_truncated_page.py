"""The page of a run whose input was cut (``--truncate``): it carries only the captured text,
opens without errors and starts at the layer and head asked for."""

from __future__ import annotations

import re

import numpy as np

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.viewer import to_html

from .test_viewer import clean, hooks, wait_js


def test_truncated_long_text_opens_at_the_asked_view(page, tmp_path):
    n = 8
    masked = np.triu(np.ones((n, n), bool), 1)
    a = np.where(masked, 0, 1.0).astype(np.float32)
    a /= a.sum(-1, keepdims=True)  # [query, key]
    layers = [np.repeat(a[None], 2, 0) for _ in range(2)]  # each [head, query, key]
    text = "the cat sat on the mat and " * 80_000  # 2.2 MB, 560,000 words
    words = [m for m, _ in zip(re.finditer(r"\S+", text), range(n))]  # the first n words
    toks = [Token(text=m.group(), raw=m.group(), id=i, start=m.start(), end=m.end())
            for i, m in enumerate(words)]
    run = AttentionRun(text=text, tokens=toks, stacks={"self": AttentionStack("self", layers,
                                                                             masked)},
                       model={"id": "toy", "causal": True, "architecture": "decoder"})
    path = tmp_path / "trunc.html"
    to_html(run, path, layer=1, head=1)
    page.goto(path.as_uri())
    wait_js(page, "document.querySelector('.attnmap')?.dataset.draws >= 1", 30)
    state = hooks(page, "a.state")
    assert (state["layer"], state["head"]) == (1, 1)
    clean(page)
    # the 2.2 MB text stays out: the page is as big as one made from the captured part alone
    import dataclasses

    captured = to_html(dataclasses.replace(run, text=text[: toks[-1].end]), layer=1, head=1)
    assert abs(path.stat().st_size - len(captured.encode("utf-8"))) < 1_000
    assert path.stat().st_size < len(text) / 10
