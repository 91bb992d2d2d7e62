"""A long run in JupyterLab: `attnmap.show(run)` of a 2,100-token run that keeps queries and
keys sends the payload's header only, and the viewer draws from tiles the kernel computes on
request (anywidget custom messages). The overview's blocks and a zoomed-in exact cell's
tooltip equal `attnmap.tiles.tile` and the run's own weights."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from attnmap import tiles

from .test_jupyter import _viewer, jupyter_lab, open_notebook

N = 2100  # over the 2048² cells a head may have in a dense payload: auto picks tiles
LAYER, HEAD = 1, 1


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    import attnmap
    from tests._models import CORPUS, build_gpt2

    path = build_gpt2(tmp_path_factory.mktemp("g2k") / "m", layers=2, heads=2, n_positions=N)
    rng = random.Random(1)
    words = " ".join(CORPUS[:5]).split()
    text = " ".join(rng.choice(words) for _ in range(N + 500))
    with pytest.warns(UserWarning, match="keeping the first"):
        run = attnmap.capture(text, model=path, store="qk", truncate=True)
    assert len(run.tokens) == N and run.stack().lazy
    return run


@pytest.fixture
def lab(tmp_path, long_run):
    long_run.save(tmp_path / "long.safetensors")
    src = (f"import attnmap\nrun = attnmap.load({str(tmp_path / 'long.safetensors')!r})\n"
           f"w = attnmap.show(run, layer={LAYER}, head={HEAD})\n"
           "assert w.tiles and len(w.payload) < 500_000, len(w.payload)\nw")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "show-long",
                     "metadata": {}, "outputs": [], "source": src}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "long.ipynb").write_text(json.dumps(nb))
    with jupyter_lab(tmp_path) as url:
        yield url


def a(page, expr: str):
    """Evaluate `expr` with `a` bound to the viewer's test hooks."""
    return page.evaluate(f"(() => {{ const a = {_viewer(0)}.__attnmap; return {expr}; }})()")


def settle(page):
    """Wait until the draws stop (each wheel step starts one, answered by the kernel)."""
    last = -1
    while True:
        page.wait_for_timeout(300)
        n = int(page.evaluate(f"{_viewer(0)}.dataset.draws"))
        if n == last:
            return
        last = n


@pytest.mark.slow
def test_long_run_draws_from_kernel_tiles(page, lab, long_run):
    open_notebook(page, f"{lab}/lab/tree/long.ipynb")
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(f"{_viewer(0)}?.__attnmap?.lod?.tile", timeout=90000)
    page.evaluate(f"{_viewer(0)}.scrollIntoView()")
    settle(page)

    # the whole matrix in blocks, drawn from the kernel's tiles
    lod = a(page, "a.lod")
    assert lod["source"] == "kernel"
    t = lod["tile"]
    b = t["block"]
    assert b > 1 and (t["q0"], t["k0"]) == (0, 0) and t["rows"] * b >= N
    assert a(page, "a.header")["stacks"][0]["shape"] == [2, 2, N, N]
    want = tiles.tile(long_run, LAYER, HEAD, block=b, rows=t["rows"], cols=t["cols"],
                      reduce=t["reduce"])  # [query block, key block]
    for q, k in ((0, 0), (N - 1, 0), (N - 1, N - 1), (1200, 700), (700, 1200), (b, 0)):
        got = a(page, f"a.lodCell({q}, {k})")
        x = want[q // b, k // b]
        assert got["block"] == b and (got["value"] is None) == bool(np.isnan(x)), (q, k, got)
        if not np.isnan(x):
            assert got["value"] == pytest.approx(float(x), abs=1e-7)

    # zoom (wheel) onto one cell down to exact values: its tooltip is the weight itself
    q = 1500
    w = long_run.stack("self").rows(LAYER, q, q + 1)[HEAD, 0]  # [key]
    k = int(np.argmax(w[1:]) + 1)
    for _ in range(60):
        at = a(page, f"a.cell({q}, {k})")
        page.mouse.move(at["x"], at["y"])
        page.mouse.wheel(0, -120)
        page.wait_for_timeout(30)
        if a(page, "a.geometry")["cs"] >= 40:
            break
    settle(page)
    assert a(page, "a.lod.tile")["block"] == 1
    at = a(page, f"a.cell({q}, {k})")
    page.mouse.move(at["x"], at["y"])
    page.mouse.move(at["x"] + 1, at["y"])
    tip_sel = f"{_viewer(0)}.querySelector('.am-tip')"
    page.wait_for_function(f"{tip_sel} && !{tip_sel}.hidden && {tip_sel}.dataset.block === '1'",
                           timeout=20000)
    tip = page.evaluate(f"(() => {{ const e = {tip_sel}; return {{ ...e.dataset, "
                        "text: e.textContent }; })()")
    assert (int(tip["q"]), int(tip["k"])) == (q, k)
    assert float(tip["raw"]) == pytest.approx(float(w[k]), abs=1e-6)
    assert f"attention {w[k]:.4f}" in tip["text"]
    # the future is masked, not 0
    future = a(page, f"a.lodCell({q}, {q + 1})")
    assert future is None or future["value"] is None
    assert page.evaluate(f"{_viewer(0)}.querySelector('.am-status.am-error')") is None
    assert not [e for e in page.errors if "attnmap" in e]
