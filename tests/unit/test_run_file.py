"""The run file: exact round trip, the documented tensor names, refusing what isn't a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

import attnmap
from attnmap import AttentionRun, AttentionStack, AttnmapError, Token


def _run(causal: bool = True, n: int = 4, layers: int = 2, heads: int = 3) -> AttentionRun:
    rng = np.random.default_rng(0)
    masked = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    ls = []
    for _ in range(layers):
        a = rng.random((heads, n, n)).astype(np.float32)
        a[:, masked] = 0
        ls.append(a / a.sum(-1, keepdims=True))
    toks = [Token(text=f"t{i}", raw=f"t{i}", id=i, start=2 * i, end=2 * i + 1) for i in range(n)]
    return AttentionRun(text="a b c d", tokens=toks,
                        stacks={"self": AttentionStack("self", ls, masked)},
                        model={"id": "toy", "causal": causal, "architecture": "decoder",
                               "layers": layers, "heads": heads})


def test_round_trip_exact(tmp_path):
    run = _run()
    path = run.save(tmp_path / "r.safetensors")
    back = attnmap.load(path)
    assert back.tokens == run.tokens
    assert back.text == run.text
    assert back.model == run.model
    np.testing.assert_array_equal(back.attention, run.attention)
    np.testing.assert_array_equal(back.masked, run.masked)


def test_documented_layout(tmp_path):
    run = _run(layers=2, heads=3, n=4)
    path = run.save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        assert set(f.keys()) == {"layer.0", "layer.1", "mask"}
        assert f.get_tensor("layer.1").shape == (3, 4, 4)
        assert f.get_tensor("layer.0").dtype == np.float32
        meta = json.loads(f.metadata()["attnmap"])
    assert meta["tokens"] == ["t0", "t1", "t2", "t3"]
    assert meta["model"] == "toy"
    assert meta["causal"] is True
    assert meta["format_version"] == 1


def test_float16_storage(tmp_path):
    run = _run()
    back = attnmap.load(run.save(tmp_path / "r.safetensors", dtype="float16"))
    assert back.stack().layers[0].dtype == np.float16
    np.testing.assert_allclose(back.attention, run.attention, atol=1e-3)


def test_bad_header_refused(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\xff" * 8 + b"not json at all")
    with pytest.raises(AttnmapError, match="not a readable attnmap run"):
        attnmap.load(p)


def test_truncated_file_refused(tmp_path):
    path = _run().save(tmp_path / "r.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AttnmapError):
        attnmap.load(cut)


def test_plain_safetensors_is_not_a_run(tmp_path):
    p = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros((2, 2), np.float32)}, str(p))
    with pytest.raises(AttnmapError, match="not an attnmap run"):
        attnmap.load(p)


def test_newer_format_refused(tmp_path):
    run = _run()
    p = tmp_path / "new.safetensors"
    meta = {"format_version": 99, "tokens": [], "model": "x", "causal": False}
    save_file({"layer.0": run.stack().layers[0]}, str(p), metadata={"attnmap": json.dumps(meta)})
    with pytest.raises(AttnmapError, match="upgrade attnmap"):
        attnmap.load(p)


def test_save_replaces_only_when_complete(tmp_path):
    p = tmp_path / "r.safetensors"
    p.write_bytes(b"old")
    run = _run()
    run.extra["broken"] = np.array([object()])  # safetensors cannot store it: fails mid-write
    with pytest.raises(SafetensorError, match='Unknown dtype "object"'):
        run.save(p)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["r.safetensors"]


def test_index_errors_name_the_range():
    run = _run(layers=2, heads=3)
    with pytest.raises(AttnmapError, match=r"0\.\.1"):
        run.layer(2)
    with pytest.raises(AttnmapError, match=r"0\.\.2"):
        run.head(0, 3)
    np.testing.assert_array_equal(run.head(-1, -1), run.attention[1, 2])


def test_a_run_displays_itself_as_the_widget():
    pytest.importorskip("anywidget")
    from ipywidgets.widgets.widget import _instances

    from attnmap.viewer import encode

    run = _run()
    bundle = run._repr_mimebundle_()
    assert isinstance(bundle, dict)
    assert bundle["text/plain"] == repr(run)
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["version_major"] == 2
    # the bundle names a live widget that carries this run
    assert _instances[view["model_id"]].payload == encode(run)
    # IPython passes include and exclude
    again = run._repr_mimebundle_(include=None, exclude=None)
    assert set(again) == set(bundle)


def test_run_module_does_not_load_the_viewer():
    import subprocess
    import sys

    code = ("import sys, attnmap.run; print(sorted(m for m in sys.modules "
            "if m.startswith(('attnmap.viewer', 'anywidget'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_written_file_has_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = _run().save(tmp_path / "r.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_log_sum_exp_that_does_not_fit_is_refused(tmp_path):
    """A long run's ``lse.layer.{i}`` must be float32 [heads, queries] for every layer."""
    from safetensors.numpy import load_file

    from attnmap.qkweights import QKLayers

    rng = np.random.default_rng(0)
    q = [rng.standard_normal((2, 4, 3), dtype=np.float32) for _ in range(2)]
    k = [rng.standard_normal((1, 4, 3), dtype=np.float32) for _ in range(2)]
    mask = np.triu(np.ones((4, 4), bool), 1)
    lse = [rng.standard_normal((2, 4), dtype=np.float32) for _ in range(2)]
    run = _run(layers=2, heads=2, n=4)
    run.stacks["self"] = AttentionStack("self", QKLayers(q, k, [1.0, 1.0], mask, logsumexp=lse),
                                        mask)
    path = run.save(tmp_path / "r.safetensors")
    assert [np.array_equal(a, b) for a, b in zip(
        attnmap.load(path).stack().layers.logsumexp, lse, strict=True)] == [True, True]
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for bad in (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float64)):
        save_file({**tensors, "lse.layer.1": bad}, str(tmp_path / "bad.safetensors"), meta)
        with pytest.raises(AttnmapError, match="log-sum-exp"):
            attnmap.load(tmp_path / "bad.safetensors")
    del tensors["lse.layer.1"]  # one layer only
    save_file(tensors, str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(AttnmapError, match="log-sum-exp"):
        attnmap.load(tmp_path / "bad.safetensors")


def _qk_run(masks: list[np.ndarray], n: int) -> AttentionRun:
    from attnmap.qkweights import QKLayers

    rng = np.random.default_rng(1)  # one key head, two query heads
    q = [rng.standard_normal((2, n, 3), dtype=np.float32) for _ in masks]
    k = [rng.standard_normal((1, n, 3), dtype=np.float32) for _ in masks]
    run = _run(layers=len(masks), heads=2, n=n)
    uniform = all(m is masks[0] for m in masks)
    run.stacks["self"] = AttentionStack("self", QKLayers(q, k, [1.0] * len(masks), masks),
                                        masks[0], None if uniform else masks)
    return run


def test_long_runs_keep_masks_as_row_spans(tmp_path):
    """A long run's causal and sliding-window masks go to the file as one span per query
    (format 4) and come back cell for cell, their spans handed to the run (not searched for
    again); a mask with gaps stays a matrix."""
    from attnmap.qkweights import row_spans

    n = 300
    r, c = np.indices((n, n))
    causal = c > r
    window = causal | (c <= r - 16)
    gaps = causal.copy()
    gaps[:, 5] = True  # key 5 hidden from every row: rows past it see two runs
    for masks, stored in (([causal] * 2, {"mask.rows"}), ([causal, window],
                                                          {"mask.0.rows", "mask.1.rows"}),
                          ([causal, gaps], {"mask.0.rows", "mask.1"})):
        path = _qk_run(masks, n).save(tmp_path / "r.safetensors")
        with safe_open(str(path), framework="numpy") as f:
            assert {x for x in f.keys() if x.startswith("mask")} == stored
            meta = json.loads(f.metadata()["attnmap"])
            if "mask.rows" in stored:
                assert f.get_tensor("mask.rows").dtype == np.int32
                assert f.get_tensor("mask.rows").shape == (n, 2)
        assert meta["format_version"] == 4
        back = attnmap.load(path)
        lay = back.stack().layers
        for li, m in enumerate(masks):
            assert np.array_equal(back.mask(li), m)
            if {f"mask.{li}.rows", "mask.rows"} & stored:  # spans handed over, not found again
                assert id(back.mask(li)) in lay._spans
            for got, want in zip(lay.spans(li), row_spans(m), strict=True):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(back.layer(li), _qk_run(masks, n).layer(li))


@pytest.mark.parametrize("rows,words", [
    (np.array([[0, 1], [0, 2], [0, 9]], np.int32), "spans 0 ≤ first ≤ end ≤ 3"),
    (np.array([[0, 1], [2, 1], [0, 3]], np.int32), "spans 0 ≤ first ≤ end ≤ 3"),
    (np.array([[-1, 1], [0, 2], [0, 3]], np.int32), "spans 0 ≤ first ≤ end ≤ 3"),
    (np.zeros((2, 2), np.int32), r"integers \[3, 2\]"),
    (np.zeros((3, 2), np.float32), r"integers \[3, 2\]"),
])
def test_bad_row_spans_are_refused(tmp_path, rows, words):
    from safetensors.numpy import load_file

    path = _qk_run([np.triu(np.ones((3, 3), bool), 1)] * 2, 3).save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["mask.rows"] = rows
    save_file(tensors, str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(AttnmapError, match=words):
        attnmap.load(tmp_path / "bad.safetensors")
