"""A long run's standalone page (8,192 tokens, the long representation) in Chromium: it opens
and draws the whole matrix as blocks, zooms down to exact cells whose tooltips are the
captured weights within the page's codes, pans, and switches between block max and sum."""

from __future__ import annotations

import random

import numpy as np
import pytest

from attnmap.viewer import html, longpage
from attnmap.viewer.payload import LEVELS

from .test_viewer import clean, hooks, wait_js

N = 8192
K = 16


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    import attnmap
    from tests._models import CORPUS, build_gpt2

    path = build_gpt2(tmp_path_factory.mktemp("g8k") / "m", layers=2, heads=2, n_positions=N)
    rng = random.Random(0)
    words = " ".join(CORPUS[:5]).split()
    text = " ".join(rng.choice(words) for _ in range(N + 2000))  # more tokens than N
    with pytest.warns(UserWarning, match="keeping the first"):
        run = attnmap.capture(text, model=path, store="qk", truncate=True)
    assert len(run.tokens) == N and run.stack().lazy
    return run


@pytest.fixture(scope="module")
def long_file(long_run, tmp_path_factory):
    data = longpage.build(long_run, k=K)
    path = tmp_path_factory.mktemp("page") / "long.html"
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
