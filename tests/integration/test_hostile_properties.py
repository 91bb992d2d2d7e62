"""Hostile text anywhere (tokens, the text, the model id, metadata): every output shows it as
data or refuses with one line. Dollars (matplotlib math), ESC sequences, NUL, bidi controls,
lone surrogates, line separators and markup are drawn from on purpose."""

from __future__ import annotations

import io
import unicodedata

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.text import Text

import attnmap
from attnmap import AttentionRun, AttentionStack, AttnmapError, Token
from attnmap.cli import main

NASTY = ["$", "$5-$10", r"$\notacmd$", "\x1b[2J", "\x1b]0;t\x07", "\x00", "\u202e", "\ud800",
         "\u2028", "</script>", "<img src=x onerror=alert(1)>", "\"'`", "\t", "\n", "{}", "%s"]
pieces = st.one_of(st.sampled_from(NASTY),
                   st.characters(codec=None, exclude_categories=()))  # surrogates included
hostile = st.lists(pieces, min_size=1, max_size=4).map("".join)

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _unsafe(s: str) -> list[str]:
    """Characters a terminal would obey: controls (bar newline, tab), bidi/format, surrogates."""
    return [c for c in s if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]


def _run(tokens: list[str], text: str, model_id: str, note: str) -> AttentionRun:
    n = len(tokens)
    masked = np.triu(np.ones((n, n), bool), 1)
    a = np.tril(np.ones((1, n, n), np.float32))
    a /= a.sum(-1, keepdims=True)
    return AttentionRun(text=text, tokens=[Token(text=t, raw=t, id=i) for i, t in
                                           enumerate(tokens)],
                        model={"id": model_id, "causal": True, "note": note},
                        stacks={"self": AttentionStack("self", [a], masked)})


def _one_line(exc: AttnmapError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg


@SETTINGS
@given(st.lists(hostile, min_size=1, max_size=4), hostile, hostile, hostile)
def test_files_and_terminal(tmp_path_factory, tokens, text, model_id, note):
    run = _run(tokens, text, model_id, note)
    path = tmp_path_factory.mktemp("h") / "r.safetensors"
    try:
        run.save(path)
        back = attnmap.load(path)
    except AttnmapError as exc:  # refused: one line, and nothing half-written left behind
        _one_line(exc)
        assert not list(path.parent.glob(".*.part"))
        return
    for t in back.tokens:
        assert not _unsafe(t.text), t.text
    for argv in (["info", "--run", str(path)], ["heads", "--run", str(path)],
                 ["info", "--json", "--run", str(path)]):
        out, err = io.StringIO(), io.StringIO()
        import contextlib

        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code in (0, 2)
        for stream in (out.getvalue(), err.getvalue()):
            assert not _unsafe(stream), (argv, stream)
            assert "Traceback" not in stream


@SETTINGS
@given(st.lists(hostile, min_size=1, max_size=4), hostile)
def test_figures_and_pages(tokens, model_id):
    run = _run(tokens, " ".join(tokens), model_id, "")
    try:
        fig = attnmap.heatmap(run, 0, 0, predictions=False)
        fig.savefig(io.BytesIO(), format="png")
        fig.savefig(io.BytesIO(), format="svg")
    except AttnmapError as exc:
        _one_line(exc)
    else:
        # every text that could hold a dollar is literal (colour-bar numbers are the
        # formatter's own, made while drawing)
        assert all(t.get_parse_math() is False for t in fig.findobj(Text)
                   if "$" in t.get_text())
    try:
        page = attnmap.to_html(run)
    except AttnmapError as exc:
        _one_line(exc)
        return
    # data travels base-85 encoded: nothing from a token can open or close a tag
    assert page.count("<script") == 4 and page.count("</script") == 4
