"""The public surface: pinned names, no name that is also a module, one vocabulary."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import attnmap
import attnmap.analysis
import attnmap.viewer
from attnmap._errors import AttnmapDeprecationWarning
from attnmap.cli import build_parser

PUBLIC = {
    "AttentionRun", "AttentionStack", "AttnmapError", "AttnmapWarning", "Token",
    "__version__", "capture", "load", "heatmap", "show", "to_html", "head_scores",
    "relate", "rollout", "merge_words", "transform", "from_arrays", "generate",
}


def _all_modules() -> set[str]:
    return {m.name for m in pkgutil.walk_packages(attnmap.__path__, "attnmap.")}


def test_public_names_are_pinned_and_are_functions_or_classes():
    assert set(attnmap.__all__) == PUBLIC
    for name in PUBLIC - {"__version__"}:
        obj = getattr(attnmap, name)
        assert inspect.isfunction(obj) or inspect.isclass(obj), (name, obj)


@pytest.mark.parametrize("package", [attnmap, attnmap.analysis, attnmap.viewer])
def test_no_exported_name_is_also_a_module(package):
    modules = _all_modules()
    for name in package.__all__:
        assert f"{package.__name__}.{name}" not in modules, (
            f"{package.__name__}.{name} is both an exported name and a module")


def test_importing_every_module_leaves_the_functions_in_place():
    for name in sorted(_all_modules()):
        if name.startswith("attnmap.app") or name.endswith(("widget", "__main__")):
            continue  # optional extras; __main__ runs the command line
        importlib.import_module(name)
    for package in (attnmap, attnmap.analysis, attnmap.viewer):
        for name in package.__all__:
            obj = getattr(package, name)
            assert not inspect.ismodule(obj), f"{package.__name__}.{name} became a module"


def _params(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


@pytest.mark.parametrize("fn", [attnmap.heatmap, attnmap.to_html, attnmap.show])
def test_outputs_take_explicit_keywords_from_one_vocabulary(fn):
    params = _params(fn)
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "no **options"
    for name in ("stack", "layer", "head", "scale", "ignore_first", "cmap"):
        assert name in params, f"{fn.__name__} lacks {name}="


def test_analysis_speaks_the_same_words():
    assert "ignore_first" in _params(attnmap.head_scores)
    assert "ignore_current" in _params(attnmap.head_scores)
    assert "top_k" in _params(attnmap.capture) and "k" not in _params(attnmap.capture)
    assert "ax" in _params(attnmap.heatmap)


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_command_offers_the_same_stack_and_scale_choices():
    stacks, scales = set(), set()
    for parser in _commands().values():
        st = _option(parser, "--stack")
        if st is not None:
            stacks.add(tuple(st.choices))
        sc = _option(parser, "--scale")
        if sc is not None:
            scales.add(sc.metavar)
    assert stacks == {("self", "encoder", "decoder", "cross")}
    assert scales == {"{unit,data,log}"}


def test_top_means_rows_and_top_k_means_predictions():
    for name, parser in _commands().items():
        top, top_k = _option(parser, "--top"), _option(parser, "--top-k")
        if top_k is not None:
            assert top_k.dest == "top_k"
        if top is not None and top.help != argparse.SUPPRESS:
            assert top.dest == "top", f"{name} --top should count rows, not {top.dest}"
    assert _option(_commands()["predict"], "--top-k") is not None
    assert _option(_commands()["html"], "--top-k") is not None


def _tiny_run():
    from attnmap import AttentionRun, AttentionStack, Token

    n = 3
    a = np.tril(np.ones((1, n, n), np.float32))
    a /= a.sum(-1, keepdims=True)
    toks = [Token(text=t, raw=t, id=i) for i, t in enumerate(["a", "b", "c"])]
    return AttentionRun(text="a b c", tokens=toks, model={"id": "t"},
                        stacks={"self": AttentionStack("self", [a],
                                                       np.triu(np.ones((n, n), bool), 1))})


def test_old_names_warn_and_still_work():
    run = _tiny_run()
    with pytest.warns(AttnmapDeprecationWarning, match="attnmap.attribution.transform"):
        old = attnmap.analysis.transform
    assert old is attnmap.transform
    with pytest.warns(AttnmapDeprecationWarning, match="scale='data'"):
        page = attnmap.to_html(run, scale="head")
    assert page == attnmap.to_html(run, scale="data")
