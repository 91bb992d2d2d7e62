"""The viewer's JS sources: type check (tsc), unit tests (node --test), and the shipped bundle
(integration tier: each runs Node.js as a real process).

``src/attnmap/viewer/static/viewer.js`` is built from ``js/`` by esbuild; these
tests need the pinned dev tools from ``package-lock.json``: run ``npm ci`` at the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.viewer import payload as P
from attnmap.viewer.colours import lut_entry
from attnmap.viewer.html import b85encode

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
SHIPPED = ROOT / "src" / "attnmap" / "viewer" / "static" / "viewer.js"


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed; the viewer's JS tests need Node.js ≥ 18 and `npm ci`")
    for tool in ("typescript", "esbuild"):
        if not (ROOT / "node_modules" / tool / "package.json").is_file():
            pytest.fail(f"node_modules/{tool} is missing: run npm ci (at {ROOT})")
    return exe


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_types_check(node):
    tsc = ROOT / "node_modules" / "typescript" / "bin" / "tsc"
    r = _run([node, str(tsc), "--noEmit", "-p", str(JS / "tsconfig.json")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_tsconfig_is_strict():
    opts = json.loads((JS / "tsconfig.json").read_text("utf-8"))["compilerOptions"]
    assert opts["checkJs"] and opts["strict"] and opts["noImplicitReturns"]


def _fixture_run() -> AttentionRun:
    rng = np.random.default_rng(3)
    n = 6
    masked = np.triu(np.ones((n, n), dtype=bool), k=1)  # [query, key]
    layers = []
    for _ in range(2):
        w = rng.random((3, n, n)).astype(np.float32)  # [head, query, key]
        w[:, masked] = 0
        layers.append(w / w.sum(axis=2, keepdims=True))
    words = ["<s>", "a", "</script>", "<b>x</b>", "␣é", "\"'"]
    toks = [Token(text=t, raw=t, id=i, special=i == 0) for i, t in enumerate(words)]
    return AttentionRun(tokens=toks, stacks={"self": AttentionStack("self", layers, masked)},
                        model={"id": "fixture"}, text=" ".join(words))


def _write_fixture(run: AttentionRun, fx: Path, precision: str) -> None:
    blob = P.encode(run, cmap="viridis", precision=precision)
    layers = {}
    for (stack, li), layer in P.decode(blob)["layers"].items():
        vals = np.where(layer["masked"], np.nan, layer["values"]).ravel()  # [head, query, key]
        layers[f"{stack}/{li}"] = {
            "shape": layer["shape"],
            "values": [None if np.isnan(v) else float(v) for v in vals],
            "peaks": [float(v) for v in layer["peaks"].ravel()],  # [head, query]
        }
    fx.with_suffix(".b85").write_text(b85encode(blob), "utf-8")
    fx.with_suffix(".json").write_text(json.dumps({
        "length": len(blob), "tokens": [[t.text for t in run.tokens]], "cmap": "viridis",
        "layers": layers,
    }), "utf-8")


def test_node_unit_tests(node, tmp_path):
    run = _fixture_run()
    fx, compact = tmp_path / "payload", tmp_path / "compact"
    _write_fixture(run, fx, "full")
    _write_fixture(run, compact, "compact")
    luts = tmp_path / "luts.json"
    luts.write_text(json.dumps({n: lut_entry(n)["lut"] for n in ("Blues", "RdBu_r")}), "utf-8")
    r = _run([node, "--test", str(JS / "test")],
             env={"ATTNMAP_PAYLOAD_FIXTURE": str(fx), "ATTNMAP_COMPACT_FIXTURE": str(compact),
                  "ATTNMAP_LUT_FIXTURE": str(luts)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# skipped 0" in r.stdout, r.stdout[-2000:]


def test_shipped_bundle_is_built_from_the_sources(node, tmp_path):
    out = tmp_path / "viewer.js"
    r = _run([node, str(JS / "build.mjs"), str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "src/attnmap/viewer/static/viewer.js is stale: run `npm run build` and commit it")
    text = SHIPPED.read_text("utf-8")
    assert "export {" in text and "as default" in text  # the module shape all hosts import
