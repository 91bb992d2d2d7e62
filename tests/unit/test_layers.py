"""The layers of the package, enforced: which module may import which.

numpy core  (tokens, run, analysis/, diff, payload encoding)  imports no torch and no output
capture     (models, capturing, predictions, the q/k recorder)  the only layer importing torch
outputs     (plot, viewer/, app/)                               above core and capture
cli/        on top; nothing below imports it

Imports are read from the source (every ``import``, also inside functions), so a lazy import
that crosses a layer fails here as well as an eager one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "attnmap"

CORE = {"attnmap._errors", "attnmap._io", "attnmap._parallel", "attnmap._options",
        "attnmap.tokens", "attnmap.run", "attnmap.qkweights", "attnmap.tiles", "attnmap.diff",
        "attnmap.arrays", "attnmap.analysis", "attnmap.analysis.*", "attnmap.viewer.payload",
        "attnmap.viewer.colours", "attnmap.patches"}
CAPTURE = {"attnmap.models", "attnmap.capturing", "attnmap.predict", "attnmap._qk",
           "attnmap._chat", "attnmap._tiles_torch", "attnmap.attribution", "attnmap.probes",
           "attnmap.generating", "attnmap.vision", "attnmap.corpus", "attnmap._corpus_io"}
OUTPUT = {"attnmap.plot", "attnmap.plot_image", "attnmap.viewer", "attnmap.viewer.html",
          "attnmap.viewer.widget", "attnmap.viewer.longpage", "attnmap.viewer.census",
          "attnmap.app", "attnmap.app.*"}
CLI = {"attnmap.cli", "attnmap.cli.*", "attnmap.__main__"}
FACADE = {"attnmap"}  # the package's front door re-exports from every layer, lazily
LAYERS = {"core": CORE, "capture": CAPTURE, "output": OUTPUT, "cli": CLI, "facade": FACADE}
MAY_IMPORT = {
    "core": {"core"},
    "capture": {"core", "capture"},
    "output": {"core", "capture", "output"},
    "cli": {"core", "capture", "output", "cli", "facade"},
    "facade": {"core", "capture", "output"},
}
# Third-party packages that belong to one layer (anything else: numpy, safetensors, stdlib).
EXTERNAL = {
    "torch": {"capture"}, "transformers": {"capture"}, "huggingface_hub": {"capture"},
    "accelerate": {"capture"},
    "matplotlib": {"output", "attnmap.viewer.colours"},  # colours: matplotlib's LUTs, the truth
    "fastapi": {"app", "cli"}, "starlette": {"app"}, "pydantic": {"app"}, "uvicorn": {"app", "cli"},
    "anywidget": {"attnmap.viewer.widget"}, "traitlets": {"attnmap.viewer.widget"},
    "rich": {"cli"},
    "PIL": {"capture", "output"},  # images: read and thumbnailed in capture, drawn in outputs
    "ray": {"attnmap.corpus"},
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(mod: str) -> str:
    for layer, members in LAYERS.items():
        for m in members:
            if mod == m or (m.endswith(".*") and mod.startswith(m[:-1])):
                return layer
    raise AssertionError(f"{mod} belongs to no layer: add it to one in {__file__}")


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Every module `mod` imports (attnmap modules resolved; others by top-level name)."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import predict` imports a module; `from .run import load` a name
            subs = [f"{target}.{a.name}" for a in node.names]
            out.update(s for s in subs if s in known)
            if not any(s in known for s in subs):
                out.add(target)
    return {m if m.startswith("attnmap") else m.split(".")[0] for m in out}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for mod, path in mods.items():
        graph[mod] = set()
        for target in _imports(mod, path, known):
            if target.startswith("attnmap"):
                while target not in known:  # `from ..run import X` → attnmap.run
                    target = target.rpartition(".")[0]
            graph[mod].add(target)
    return graph


GRAPH = _graph()


def test_every_module_has_a_layer():
    for mod in GRAPH:
        _layer(mod)


@pytest.mark.parametrize("mod", sorted(GRAPH))
def test_imports_follow_the_layers(mod):
    layer = _layer(mod)
    for target in sorted(GRAPH[mod]):
        if target.startswith("attnmap"):
            assert _layer(target) in MAY_IMPORT[layer], (
                f"{mod} ({layer}) imports {target} ({_layer(target)})")
        elif target in EXTERNAL:
            allowed = EXTERNAL[target]
            ok = (layer in allowed or mod in allowed
                  or any(mod == f"attnmap.{a}" or mod.startswith(f"attnmap.{a}.")
                         for a in allowed))
            assert ok, f"{mod} ({layer}) imports {target}, which belongs to {sorted(allowed)}"


def test_no_import_cycles():
    graph = {m: {t for t in ts if t in GRAPH and t != "attnmap"} for m, ts in GRAPH.items()
             if m != "attnmap"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if t == m or (state.get(t) == 1 and m.startswith(t + ".")):
                continue  # a package's own __init__ while importing a submodule is no cycle
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_violation(tmp_path):
    """The rules bite: a core module importing torch, or the plot, is caught."""
    fake = {"attnmap.run": {"torch", "attnmap.plot"}}
    bad = [t for t in fake["attnmap.run"]
           if (t.startswith("attnmap") and _layer(t) not in MAY_IMPORT["core"])
           or (t in EXTERNAL and "core" not in EXTERNAL[t])]
    assert sorted(bad) == ["attnmap.plot", "torch"]


def test_loading_analysing_and_writing_a_page_imports_no_torch(tmp_path):
    from .test_payload import causal_run

    tiny_run_file = causal_run(n=6, layers=2, heads=2).save(tmp_path / "r.safetensors")
    code = f"""
import sys, attnmap
run = attnmap.load({str(tiny_run_file)!r})
attnmap.head_scores(run); attnmap.rollout(run); attnmap.merge_words(run)
attnmap.to_html(run, {str(tmp_path / 'p.html')!r})
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    assert (tmp_path / "p.html").stat().st_size > 1000
