"""Tiles of real runs: a tiny Llama-shaped model and a sliding-window one (Mistral), captured
with store="qk", equal the reduction of their exact matrices; the app serves them as float32
bytes and refuses bad requests with one clear line."""

from __future__ import annotations

import numpy as np
import pytest

import _zoo
import attnmap
from attnmap import tiles
from attnmap.app.server import create_app

from ..unit.test_tiles import assert_tile, reference
from .test_app import client_for

TEXT = "The cat that sat on the mat was black. The dog that ran in the park was brown."


@pytest.fixture(scope="module")
def tok():
    import _models

    return _models.train_tokenizer()


@pytest.fixture(scope="module")
def runs(tok):
    out = {}
    for name in ("llama", "mistral-window"):
        model = _zoo.build(name, tok)
        out[name] = attnmap.capture(TEXT, model=model, tokenizer=tok, store="qk")
    return out


@pytest.mark.parametrize("name", ["llama", "mistral-window"])
def test_tiles_of_captured_qk_runs_equal_the_exact_reduction(runs, name):
    run = runs[name]
    assert run.stack().lazy
    n = len(run.tokens)
    assert n % 4 and n > 2 * _zoo.WINDOW
    for layer in range(run.n_layers):
        for head in (0, 3, "mean", "max"):
            for block, reduce, skip0 in ((1, "max", False), (4, "max", True), (4, "sum", False),
                                         (8, "sum", True)):
                got = tiles.tile(run, layer, head, block=block, reduce=reduce,
                                 ignore_first=skip0, cache=None)
                assert_tile(got, reference(run, layer, head, block=block, reduce=reduce,
                                           ignore_first=skip0))


def test_the_window_hides_blocks_far_behind(runs):
    run = runs["mistral-window"]
    t = tiles.tile(run, 0, 1, block=_zoo.WINDOW, cache=None)
    r, c = np.indices(t.shape)
    np.testing.assert_array_equal(~np.isnan(t), (c == r) | (c == r - 1))


@pytest.fixture(scope="module")
def app_client(gpt2_dir, runs):
    app = create_app([str(gpt2_dir)], max_runs=8)
    with client_for(app) as c:
        store = app.state.attnmap.store
        ids = {name: store.add(run, 0.0).id for name, run in runs.items()}
        ids["gpt2"] = c.post("/api/runs", json={"text": "The cat sat on the mat."}).json()["id"]
        yield c, ids


def _tile(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    rows, cols = int(response.headers["x-tile-rows"]), int(response.headers["x-tile-cols"])
    return np.frombuffer(response.content, dtype="<f4").reshape(rows, cols)


@pytest.mark.parametrize("name", ["mistral-window", "gpt2"])
def test_the_app_serves_tiles_as_float32_bytes(app_client, runs, name):
    c, ids = app_client
    facts = c.get(f"/api/runs/{ids[name]}").json()
    assert facts["storage"] == ("qk" if name != "gpt2" else "weights")
    r = c.get(f"/api/runs/{ids[name]}/tiles",
              params={"layer": 1, "head": "mean", "block": 2, "q0": 2, "k0": 0, "rows": 5,
                      "cols": 7, "reduce": "sum", "ignore_first": "true"})
    assert r.headers["x-tile-block"] == "2"
    got = _tile(r)
    run = runs[name] if name != "gpt2" else None
    if run is not None:
        want = reference(run, 1, "mean", block=2, q0=2, rows=5, cols=7, reduce="sum",
                         ignore_first=True)
        assert_tile(got, want)
    whole = _tile(c.get(f"/api/runs/{ids[name]}/tiles"))  # defaults: layer 0, head 0, exact
    n = facts["n_tokens"]
    assert whole.shape == (n, n)
    assert np.isnan(whole[0, 1]) and not np.isnan(whole[1, 0])


@pytest.mark.parametrize("params,status,words", [
    ({"layer": 9}, 404, "layer must be in"),
    ({"head": 4}, 404, "head must be in 0..3"),
    ({"head": "median"}, 400, "'mean' or 'max'"),
    ({"block": 0}, 400, "zoom beyond exact"),
    ({"block": 1.5}, 400, "zoom beyond exact"),
    ({"q0": 10_000}, 400, "past the"),
    ({"k0": -1}, 400, "past the"),
    ({"rows": 2000, "cols": 2000}, 400, "over this server's limit"),
    ({"rows": 0}, 400, "at least 1"),
    ({"reduce": "mean"}, 400, "reduce must be"),
    ({"stack": "cross"}, 404, "no 'cross' attention"),
])
def test_bad_tile_requests_are_one_clear_error(app_client, params, status, words):
    c, ids = app_client
    r = c.get(f"/api/runs/{ids['llama']}/tiles", params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail
    assert c.get("/api/runs/nope/tiles").status_code == 404


def test_the_torch_path_computes_the_same_tiles(runs):
    """The GPU backend's code, run here on the CPU device; without CUDA it is not installed
    and numpy computes every tile."""
    import torch

    from attnmap._tiles_torch import install, torch_tile

    if not torch.cuda.is_available():
        assert install() is False and tiles._backend is None
    from ..unit.test_tiles import qk_run

    for run in (runs["mistral-window"], qk_run(softcap=3.0, sinks=True)):
        st = run.stack()
        for layer, head, block, reduce, skip0, (q0, k0, rows, cols) in (
                (0, 1, 4, "max", False, (0, 0, None, None)),
                (1, "mean", 3, "sum", True, (0, 0, None, None)),
                (0, "max", 2, "max", True, (5, 3, 4, 3)),
                (1, 2, 1, "sum", False, (6, 0, 5, 9))):
            nq = nk = len(run.tokens)
            r = -(-(nq - q0) // block) if rows is None else rows
            c = -(-(nk - k0) // block) if cols is None else cols
            heads = list(range(st.n_heads)) if isinstance(head, str) else [head]
            spec = dict(block=block, q0=q0, k0=k0, rows=r, cols=c, reduce=reduce,
                        ignore_first=skip0, agg=head if isinstance(head, str) else None)
            got = torch_tile(st.layers, layer, heads, run.mask(layer), spec, device="cpu")
            assert_tile(got.astype(np.float32), reference(
                run, layer, head, block=block, q0=q0, k0=k0, rows=r, cols=c, reduce=reduce,
                ignore_first=skip0))
