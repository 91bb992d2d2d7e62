"""The corpus census on Ray Data: a real local Ray (2 CPUs) started here, the same numbers as
the local engine. The slow one of the corpus tests (Ray's start takes tens of seconds)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from .._cli import run_cli
from .test_corpus import assert_same_summary, clean, handmade, jsonl, one_thread  # noqa: F401

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_and_local_give_the_same_census(clean, handmade, jsonl, tmp_path):  # noqa: F811
    out = tmp_path / "ray"
    assert not ray.is_initialized()
    r = run_cli("census", jsonl, "--model", handmade, "-o", out, "--engine", "ray",
                "--batch-size", "8", "-q")
    assert r.returncode == 0, r.stderr
    assert not ray.is_initialized()  # the local Ray it started is shut down
    local = json.loads((clean / "summary.json").read_text())
    assert_same_summary(json.loads((out / "summary.json").read_text()), local, tol=1e-9)
    a = pq.read_table(out / "heads.parquet").to_pandas().sort_values(["doc", "layer", "head"])
    b = pq.read_table(clean / "heads.parquet").to_pandas().sort_values(["doc", "layer", "head"])
    assert len(a) == len(b) and list(a["doc"]) == list(b["doc"])
    for col in a.columns:
        if col.endswith(("_sum", "_rows")):
            assert (a[col].to_numpy() - b[col].to_numpy()).__abs__().max() <= 1e-9, col
