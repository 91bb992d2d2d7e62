"""`attnmap html --representation`: the page says which representation it chose, and the long
one carries a head chunk per head that decodes to the run's own weights."""

from __future__ import annotations

import re

import numpy as np

from _cli import run_cli
from attnmap.viewer import longpage

from .test_html_cli import b85


def test_long_representation_forced(tmp_path, gpt2_run):
    src = tmp_path / "run.safetensors"
    gpt2_run.save(src)
    out = tmp_path / "long.html"
    r = run_cli("html", "--run", src, "-o", out, "--representation", "long")
    assert r.returncode == 0, r.stderr
    n = len(gpt2_run.tokens)
    assert re.search(rf"long run \({n:,} tokens\): pyramid of 1×1 blocks \+ top-\d+ per row, "
                     r"\d+ MB", r.stderr), r.stderr
    html = out.read_text("utf-8")
    elements = re.findall(r'class="attnmap-long" data-key="([^"]+)" data-length="(\d+)">'
                          r"([^<]*)</script>", html)
    L, H = gpt2_run.n_layers, gpt2_run.n_heads
    assert [e[0] for e in elements] == ["mask/self/0"] + [
        key for li in range(L) for key in [f"self/{li}/{h}" for h in range(H)] + [
            f"agg/mean/self/{li}", f"agg/max/self/{li}"]]
    by_key = {e[0]: e for e in elements}
    key, length, text = by_key[f"self/{L - 1}/{H - 1}"]
    d = longpage.decode_head(b85(text, int(length)), n, n, 1)
    w = gpt2_run.layer(L - 1)[H - 1]  # [query, key]
    np.testing.assert_allclose(d["max"], np.where(gpt2_run.mask(L - 1), np.nan, w), rtol=0.029,
                               atol=w.max() * 1e-6)
    w = gpt2_run.layer(L - 1)  # [head, query, key]
    for how, cellwise in (("mean", w.mean(axis=0)), ("max", w.max(axis=0))):
        key, length, text = by_key[f"agg/{how}/self/{L - 1}"]  # the layer's heads together
        d = longpage.decode_pyramid(b85(text, int(length)), n, n, 1)
        np.testing.assert_allclose(d["max"], np.where(gpt2_run.mask(L - 1), np.nan, cellwise),
                                   rtol=0.029, atol=w.max() * 1e-6)
    assert longpage.decode_mask(b85(elements[0][2], int(elements[0][1])), n, n).tolist() == \
        gpt2_run.mask(0).tolist()


def test_dense_is_auto_for_short_runs(tmp_path, gpt2_run):
    src = tmp_path / "run.safetensors"
    gpt2_run.save(src)
    out = tmp_path / "dense.html"
    r = run_cli("html", "--run", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"dense run ({len(gpt2_run.tokens):,} tokens): every weight" in r.stderr
    assert "attnmap-long" not in out.read_text("utf-8").split("<script type=\"module\">")[0]


def test_bad_representation_is_a_usage_error(tmp_path, gpt2_run):
    r = run_cli("html", "--run", tmp_path / "x.safetensors", "-o", tmp_path / "o.html",
                "--representation", "sparse")
    assert r.returncode == 2
    assert "--representation" in r.stderr and "Traceback" not in r.stderr
