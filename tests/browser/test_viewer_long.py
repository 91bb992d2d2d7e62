"""A long run's standalone page (8,192 tokens, the long representation) in Chromium: it opens
and draws the whole matrix as blocks, zooms down to exact cells whose tooltips are the
captured weights within the page's codes, pans, and switches between block max and sum. The
mean and max of heads are the reductions of the exact cellwise mean and max of the run's
weights: over the whole matrix (from the page's layer chunks, and from the heads where a page
has none) and cell by cell."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from attnmap.viewer import html, longpage
from attnmap.viewer.payload import LEVELS

from .test_viewer import clean, hooks, wait_js

N = 8192
K = 16


def _text(n_words: int) -> str:
    from tests._models import CORPUS

    rng = random.Random(0)
    words = " ".join(CORPUS[:5]).split()
    return " ".join(rng.choice(words) for _ in range(n_words))


@pytest.fixture(scope="module")
def model_8k(tmp_path_factory):
    from tests._models import build_gpt2

    return build_gpt2(tmp_path_factory.mktemp("g8k") / "m", layers=2, heads=2, n_positions=N)


@pytest.fixture(scope="module")
def long_run(model_8k):
    import attnmap

    with pytest.warns(UserWarning, match="keeping the first"):  # more tokens than N
        run = attnmap.capture(_text(N + 2000), model=model_8k, store="qk", truncate=True)
    assert len(run.tokens) == N and run.stack().lazy
    return run


@pytest.fixture(scope="module")
def long_data(long_run):
    return longpage.build(long_run, k=K)


@pytest.fixture(scope="module")
def long_file(long_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "long.html"
    path.write_text(html.long_page(long_data, {}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def long_file_folded(long_data, tmp_path_factory):
    """The page without its layer chunks (as pages were before them): the viewer folds the
    heads' pyramids itself."""
    from dataclasses import replace

    data = replace(long_data, chunks=[c for c in long_data.chunks if not c[0].startswith("agg/")])
    assert len(data.chunks) < len(long_data.chunks)
    path = tmp_path_factory.mktemp("page") / "long_folded.html"
    path.write_text(html.long_page(data, {}), encoding="utf-8")
    return path


def row(run, layer: int, head: int, q: int) -> np.ndarray:
    """The exact weights of query q [key], from the run's queries and keys."""
    return run.stack("self").rows(layer, q, q + 1)[head, 0]


def opened(page, path):
    page.goto(path.as_uri())
    wait_js(page, "document.querySelector('.attnmap')?.__attnmap.lod?.tile", 60)
    return hooks(page, "a.lod")


def settle(page):
    """Wait until the draws stop (each wheel step starts one)."""
    last = -1
    while True:
        wait_js(page, "document.querySelector('.attnmap').dataset.draws >= 1", 30)
        page.wait_for_timeout(150)
        n = int(page.get_attribute(".attnmap", "data-draws"))
        if n == last:
            return
        last = n


def zoom_onto(page, q: int, k: int, steps: int = 40):
    """Wheel-zoom about cell (q, k) until it is a big exact cell."""
    for _ in range(steps):
        at = hooks(page, f"a.cell({q}, {k})")
        page.mouse.move(at["x"], at["y"])
        page.mouse.wheel(0, -120)
        g = hooks(page, "a.geometry")
        if g["cs"] >= 40:
            break
    settle(page)
    at = hooks(page, f"a.cell({q}, {k})")
    page.mouse.move(at["x"], at["y"])
    page.mouse.move(at["x"] + 1, at["y"])
    wait_js(page, "!document.querySelector('.am-tip').hidden", 10)
    return page.eval_on_selector(".am-tip", "e => ({ ...e.dataset, text: e.textContent })")


def test_page_opens_and_draws_the_whole_matrix(page, long_file):
    lod = opened(page, long_file)
    assert lod["source"] == "page"
    t = lod["tile"]
    # the whole matrix at screen resolution: blocks of at least one pixel, 16 cells wide here
    assert t["block"] == 16 and (t["q0"], t["k0"]) == (0, 0)
    assert t["rows"] * t["block"] >= N and t["cols"] * t["block"] >= N
    assert lod["vmax"] > 0
    g = hooks(page, "a.geometry")
    assert g["pw"] > 300 and g["cs"] < 0.2
    # the upper triangle is masked (no value), the lower one drawn
    assert hooks(page, f"a.lodCell(100, {N - 100})")["value"] is None
    assert hooks(page, f"a.lodCell({N - 100}, 100)")["value"] > 0
    clean(page)


def test_zoomed_cell_tooltip_is_the_exact_weight(page, long_run, long_file):
    opened(page, long_file)
    q = 6000
    w = row(long_run, 0, 0, q)
    k = int(np.argmax(w[1:]) + 1)  # a kept cell (its row's largest after the sink)
    tip = zoom_onto(page, q, k)
    assert tip["block"] == "1" and int(tip["q"]) == q and int(tip["k"]) == k
    assert abs(float(tip["raw"]) - w[k]) <= w.max() / (2 * LEVELS) + 1e-6
    assert tip["text"].count("attention ") == 1 and "<" not in tip["text"]
    # a neighbour no row kept: an upper bound, never a made-up value
    kept = set(np.argsort(w)[::-1][:K].tolist())
    g = hooks(page, "a.geometry")
    seen = range(int(np.ceil(g["k0"])), int(g["k0"] + g["vk"]))  # whole cells on screen
    other = next(j for j in seen if j not in kept and j <= q)
    at = hooks(page, f"a.cell({q}, {other})")
    page.mouse.move(at["x"], at["y"])
    wait_js(page, f"document.querySelector('.am-tip').dataset.k === '{other}'", 10)
    tip2 = page.eval_on_selector(".am-tip", "e => ({ ...e.dataset, text: e.textContent })")
    assert tip2["value"].startswith("<") and "below the cells this row keeps" in tip2["text"]
    assert w[other] <= float(tip2["raw"]) + 1e-6
    # a masked cell (the future)
    at = hooks(page, f"a.cell({q}, {q + 1})")
    if hooks(page, "a.geometry")["k0"] + hooks(page, "a.geometry")["vk"] > q + 1:
        page.mouse.move(at["x"], at["y"])
        wait_js(page, f"document.querySelector('.am-tip').dataset.k === '{q + 1}'", 10)
        assert page.eval_on_selector(".am-tip", "e => e.dataset.value") == "masked"
    clean(page)


def test_pan_and_zoom_change_the_view(page, long_file):
    opened(page, long_file)
    page.focus(".attnmap")
    before = hooks(page, "a.lod.tile")
    page.keyboard.press("+")
    page.keyboard.press("+")
    settle(page)
    zoomed = hooks(page, "a.lod.tile")
    assert zoomed["block"] < before["block"] and hooks(page, "a.state")["cs"] is not None
    s0 = hooks(page, "a.state")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    settle(page)
    s1 = hooks(page, "a.state")
    assert s1["k0"] > s0["k0"] and s1["q0"] > s0["q0"]
    # drag to pan back
    g = hooks(page, "a.geometry")
    x, y = g["left"] + g["x0"] + g["pw"] / 2, g["top"] + g["y0"] + g["ph"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 100, y + 60, steps=4)
    page.mouse.up()
    settle(page)
    s2 = hooks(page, "a.state")
    assert s2["k0"] < s1["k0"] and s2["q0"] < s1["q0"]
    assert hooks(page, "a.lod.tile")["k0"] <= s2["k0"]
    page.keyboard.press("0")
    settle(page)
    assert hooks(page, "a.lod.tile")["block"] == 16
    clean(page)


def test_max_sum_toggle_changes_values(page, long_run, long_file):
    opened(page, long_file)
    q, k = 4096 + 5, 1000 + 5  # inside block (256, 62) of 16 × 16
    rows = np.stack([row(long_run, 0, 0, i) for i in range(4096, 4096 + 16)])
    block = rows[:, 992:1008]  # [query, key], all visible (keys < queries)
    vmax = hooks(page, f"a.lodCell({q}, {k})")
    assert vmax["block"] == 16 and vmax["reduce"] == "max"
    assert vmax["value"] == pytest.approx(block.max(), rel=0.029)
    page.select_option(".am-reduce", "sum")
    wait_js(page, "document.querySelector('.attnmap').__attnmap.lod.tile.reduce === 'sum'", 30)
    vsum = hooks(page, f"a.lodCell({q}, {k})")
    assert vsum["value"] == pytest.approx(block.sum(), rel=0.029)
    assert vsum["value"] > vmax["value"] * 2
    assert hooks(page, "a.state")["reduce"] == "sum"
    # head switch and mean of heads draw too (mean of block sums: exact up to the codes)
    page.select_option(".am-head", "mean")
    wait_js(page, "document.querySelector('.attnmap').__attnmap.state.head === 'mean'", 10)
    settle(page)
    other = np.stack([row(long_run, 0, 1, i) for i in range(4096, 4096 + 16)])[:, 992:1008]
    mean = hooks(page, f"a.lodCell({q}, {k})")
    assert mean["value"] == pytest.approx((block.sum() + other.sum()) / 2, rel=0.029)
    clean(page)


def exact_blocks(run, layer: int, block: int) -> dict[tuple[str, str], np.ndarray]:
    """Block reductions [Q/block, K/block] of the exact cellwise mean and max over heads of one
    layer (NaN where a block is all masked), by (head, reduce): each of mean/max by max/sum."""
    st = run.stack("self")
    mask = np.asarray(st.mask(layer), bool)  # [query, key]
    n = mask.shape[0]
    nb = -(-n // block)
    out = {(h, r): np.full((nb, nb), np.nan) for h in ("mean", "max") for r in ("max", "sum")}
    for r0 in range(0, n, 256):
        w = st.rows(layer, r0, r0 + 256)  # [head, row, key]
        m = mask[r0:r0 + 256]
        rows = w.shape[1]
        for (head, reduce), into in out.items():
            x = w.mean(axis=0) if head == "mean" else w.max(axis=0)
            x = np.where(m, np.nan, x.astype(np.float64))
            x = np.pad(x, ((0, -rows % block), (0, nb * block - n)), constant_values=np.nan)
            b = x.reshape(-1, block, nb, block)
            with warnings.catch_warnings():  # all-NaN blocks: set to NaN below
                warnings.simplefilter("ignore", RuntimeWarning)
                red = np.nanmax(b, axis=(1, 3)) if reduce == "max" else np.nansum(b, axis=(1, 3))
            red[np.isnan(b).all(axis=(1, 3))] = np.nan
            into[r0 // block:r0 // block + red.shape[0]] = red
    return out


def drawn_blocks(page, n: int, block: int) -> np.ndarray:
    """The drawn tile's value at every block of the matrix (NaN masked), read in the page."""
    vals = page.evaluate(f"""(() => {{
      const a = document.querySelector('.attnmap').__attnmap, out = [];
      for (let q = 0; q < {n}; q += {block}) for (let k = 0; k < {n}; k += {block}) {{
        const c = a.lodCell(q, k);
        out.push(c && c.value !== null && !c.upper ? c.value : c && c.upper ? -1 : -2);
      }}
      return out;
    }})()""")
    got = np.array(vals, np.float64).reshape(-(-n // block), -1)
    assert (got != -1).all(), "a value drawn as an upper bound"
    return np.where(got == -2, np.nan, got)


def show(page, head: str, reduce: str) -> None:
    page.select_option(".am-head", head)
    page.select_option(".am-reduce", reduce)
    wait_js(page, f"(s => s.head === '{head}' && s.reduce === '{reduce}')"
                  "(document.querySelector('.attnmap').__attnmap.state)", 30)
    settle(page)
    t = hooks(page, "a.lod.tile")
    assert t["reduce"] == reduce


@pytest.mark.parametrize("which", ["long_file", "long_file_folded"])
def test_mean_and_max_of_heads_over_the_whole_matrix(page, long_run, which, request):
    """Every block of the whole matrix: the mean and the max of heads, each by block max and
    by block sum, equal those reductions of the exact cellwise mean and max, within the codes.
    A page without the layer chunks (built before them) folds the heads' own pyramids: exact
    for max by max and mean by sum, and for the other two an upper (mean by max) or lower
    (max by sum) bound of the exact value."""
    opened(page, request.getfixturevalue(which))
    want = exact_blocks(long_run, 0, 16)
    folded = which == "long_file_folded"
    for head, reduce in (("max", "max"), ("mean", "sum"), ("mean", "max"), ("max", "sum")):
        show(page, head, reduce)
        assert hooks(page, "a.lod.tile")["block"] == 16
        got, w = drawn_blocks(page, N, 16), want[head, reduce]
        assert np.array_equal(np.isnan(got), np.isnan(w))
        ok = ~np.isnan(w) & (w >= np.nanmax(w) * 1e-6)  # below: the codes' floor
        assert ok.sum() > 0.45 * w.size
        if folded and (head, reduce) == ("mean", "max"):
            assert np.all(got[ok] >= w[ok] * (1 - 0.029))
        elif folded and (head, reduce) == ("max", "sum"):
            assert np.all(got[ok] <= w[ok] * (1 + 0.029))
        else:
            np.testing.assert_allclose(got[ok], w[ok], rtol=0.029)
    clean(page)


def test_mean_and_max_of_heads_cell_by_cell(page, model_8k, tmp_path, monkeypatch):
    """A small page whose rows keep every cell, under a pyramid of 4 × 4 blocks: zoomed to
    cells, the mean and max of heads are the exact cellwise mean and max of the run's weights
    (each head's cell within its row's code step), and none is a bound."""
    import attnmap

    run = attnmap.capture(_text(190), model=model_8k, store="qk")
    n = len(run.tokens)
    assert 200 < n <= 255  # k = 255 keeps every cell of every row
    monkeypatch.setattr(longpage, "OVERVIEW", 64)
    data = longpage.build(run, k=255)
    assert data.block == 4
    path = tmp_path / "small.html"
    path.write_text(html.long_page(data, {}), encoding="utf-8")
    opened(page, path)
    w = run.stack("self").rows(1, 0, n).astype(np.float64)  # [head, query, key]
    masked = np.asarray(run.mask(1), bool)
    step = w.max(axis=2) / (2 * LEVELS)  # [head, query]: half a code of the row's max
    page.select_option(".am-layer", "1")
    for head, want, tol in (("mean", w.mean(axis=0), step.mean(axis=0)),
                            ("max", w.max(axis=0), step.max(axis=0))):
        show(page, head, "max")
        assert hooks(page, "a.lod.tile")["block"] == 1
        got = drawn_blocks(page, n, 1)
        assert np.array_equal(np.isnan(got), masked)
        err = np.where(masked, 0, np.abs(got - want)) - tol[:, None] - 1e-6
        assert (err <= 0).all(), f"{head}: off by {err.max():.2e} more than the codes allow"
    assert not np.allclose(w[0], w.mean(axis=0))  # the heads differ: a real mean
    clean(page)


def test_app_viewer_draws_from_server_tiles(page, app_server):
    """The viewer with the app's tile endpoint as its source (what the app gives runs that keep
    queries and keys), against the real server: blocks and exact cells are the server's."""
    import httpx

    r = httpx.post(f"{app_server.url}/api/runs", json={"text": "The cat that sat on the mat "
                   "was black. The dog that ran in the park was brown."}, timeout=120)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    w = httpx.get(f"{app_server.url}/api/runs/{rid}/tiles", params={"layer": 1, "head": 1},
                  timeout=60).content  # the whole head, exact cells
    page.goto(app_server.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("""async (rid) => {
      const mod = await import("/static/viewer.js");
      const payload = await (await fetch(`/api/runs/${rid}/payload`)).arrayBuffer();
      const el = document.createElement("div");
      el.id = "lod-host";
      document.body.prepend(el);
      const values = { payload, options: { layer: 1, head: 1 }, layer_url: "",
                       tile_url: `/api/runs/${rid}/tiles` };
      const model = { get: (k) => values[k], set() {}, save_changes() {}, on() {}, off() {} };
      mod.default.render({ model, el });
    }""", rid)
    wait_js(page, "document.querySelector('#lod-host .attnmap')?.__attnmap.lod?.tile", 60)
    lod = page.evaluate("document.querySelector('#lod-host .attnmap').__attnmap.lod")
    assert lod["source"] == "server" and lod["tile"]["block"] == 1  # a short run: cells
    n = int(np.sqrt(len(w) // 4))
    exact = np.frombuffer(w, "<f4").reshape(n, n)  # [query, key], NaN masked
    for q, k in ((3, 1), (n - 1, 0), (n - 1, n - 1), (2, 5)):
        got = page.evaluate(f"document.querySelector('#lod-host .attnmap').__attnmap"
                            f".lodCell({q}, {k})")
        want = exact[q, k]
        assert (got["value"] is None) == bool(np.isnan(want))
        if not np.isnan(want):
            assert got["value"] == pytest.approx(float(want), abs=1e-7) and not got["upper"]
    assert page.errors == []
