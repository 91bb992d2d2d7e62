"""attnmap beside bertviz and CircuitsVis: standalone HTML size and export time, and capture
time beside a bare transformers forward.

    pip install -r bench/requirements.txt
    python bench/bench_tools.py [--repeat 3] [--tokens 64 128 256 512 1024]

Models: the bundled all-MiniLM-L6-v2 (6 × 12, at most 512 tokens) and a 12-layer × 12-head
GPT-2-shaped model built from a config (hidden size 768, random weights). All tools get the
same attention tensors; each export is timed from "attention in hand" to "HTML string/file
complete". bertviz and CircuitsVis embed every weight as JSON text, so their files grow with
layers × heads × n²: where that would pass ``--max-cells`` they are skipped and the size they
would have is estimated from the measured bytes per cell.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from _common import OUT, machine, text_of_tokens


def _time(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return median(times), out


def _models(tmp: Path, max_tokens: int) -> list[tuple[str, str, int]]:
    from bench_memory import build_model

    from attnmap.models import bundled_model_path

    gpt = build_model(tmp / "gpt2-12x12", max(1024, max_tokens))
    return [("all-MiniLM-L6-v2", str(bundled_model_path()), 512),
            ("GPT-2-shaped 12×12", str(gpt), 1024)]


def bench_model(name: str, path: str, limit: int, sizes: list[int], repeat: int,
                max_cells: float) -> list[dict[str, Any]]:
    from transformers import AutoModel

    from attnmap.capturing import get_model

    loaded = get_model(path)
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    rows = []
    bytes_per_cell: dict[str, float] = {}
    for n in [s for s in sizes if s <= limit]:
        row = _one_size(name, n, loaded, sdpa, eager, repeat, max_cells, bytes_per_cell)
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _one_size(name: str, n: int, loaded: Any, sdpa: Any, eager: Any, repeat: int,
              max_cells: float, bytes_per_cell: dict[str, float]) -> dict[str, Any]:
    import torch
    from bertviz import head_view, model_view
    from circuitsvis.attention import attention_heads

    import attnmap

    tok = loaded.tokenizer
    text = text_of_tokens(tok, n)
    ids = torch.tensor([tok(text)["input_ids"]])
    row: dict[str, Any] = {"model": name, "tokens": int(ids.shape[1])}

    def fwd(m: Any, weights: bool) -> Any:
        with torch.no_grad():
            return m(input_ids=ids, output_attentions=weights)

    row["forward_sdpa_s"], _ = _time(lambda: fwd(sdpa, False), repeat)
    row["forward_eager_s"], out = _time(lambda: fwd(eager, True), repeat)
    row["attnmap_capture_s"], run = _time(
        lambda: attnmap.capture(text, model=loaded, store="weights"), repeat)
    cells = run.n_layers * run.n_heads * len(run.tokens) ** 2
    html_path = OUT / f"attnmap_{name[:4]}_{n}.html"
    row["attnmap_html_s"], _ = _time(lambda: attnmap.to_html(run, html_path), repeat)
    row["attnmap_html_mb"] = html_path.stat().st_size / 1e6
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    attn = out.attentions  # tuple of [1, head, query, key]

    def other(key: str, fn: Any) -> None:
        if cells > max_cells:
            est = bytes_per_cell.get(key)
            row[f"{key}_mb"] = None if est is None else est * cells / 1e6
            row[f"{key}_s"] = None
            row[f"{key}_estimated"] = True
            return
        t, html = _time(fn, 1 if cells > 2e6 else repeat)
        size = len(html.encode("utf-8"))
        bytes_per_cell[key] = size / cells
        row[f"{key}_s"], row[f"{key}_mb"] = t, size / 1e6

    other("bertviz_head_view", lambda: head_view(attn, tokens, html_action="return").data)
    other("bertviz_model_view", lambda: model_view(attn, tokens, html_action="return").data)
    other("circuitsvis", lambda: "".join(
        attention_heads(attention=a[0], tokens=tokens).local_src for a in attn))
    return row


def _fmt(v: Any, unit: str = "") -> str:
    return "—" if v is None else f"{v:.2f}{unit}"


def _line(r: dict[str, Any]) -> str:
    return (f"{r['model']:<20} {r['tokens']:>5} tok | attnmap html {r['attnmap_html_s']:.2f}s "
            f"{r['attnmap_html_mb']:.2f} MB | bertviz head_view "
            f"{_fmt(r['bertviz_head_view_s'], 's')} {_fmt(r['bertviz_head_view_mb'], ' MB')} | "
            "circuitsvis "
            f"{_fmt(r['circuitsvis_s'], 's')} {_fmt(r['circuitsvis_mb'], ' MB')} | capture "
            f"{r['attnmap_capture_s']:.2f}s vs eager {r['forward_eager_s']:.2f}s / sdpa "
            f"{r['forward_sdpa_s']:.2f}s")


def markdown(rows: list[dict[str, Any]]) -> str:
    def ratio(a: Any, b: Any) -> str:
        return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"

    def est(r: dict[str, Any], key: str) -> str:
        v = r.get(f"{key}_mb")
        if v is None:
            return "—"
        return f"~{v:,.0f} (est.)" if r.get(f"{key}_estimated") else f"{v:,.1f}"

    lines = [
        "| model | tokens | attnmap HTML MB | bertviz head_view MB | bertviz model_view MB | "
        "CircuitsVis MB (all layers) | attnmap export s | bertviz head_view s | CircuitsVis s "
        "| size attnmap/bertviz | time attnmap/bertviz | time attnmap/CircuitsVis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['attnmap_html_mb']:.2f} | "
            f"{est(r, 'bertviz_head_view')} | {est(r, 'bertviz_model_view')} | "
            f"{est(r, 'circuitsvis')} | {r['attnmap_html_s']:.2f} | "
            f"{_fmt(r['bertviz_head_view_s'])} | {_fmt(r['circuitsvis_s'])} | "
            f"{ratio(r['attnmap_html_mb'], r['bertviz_head_view_mb'])} | "
            f"{ratio(r['attnmap_html_s'], r['bertviz_head_view_s'])} | "
            f"{ratio(r['attnmap_html_s'], r['circuitsvis_s'])} |")
    lines += [
        "",
        "| model | tokens | bare forward, SDPA (no weights) s | bare forward, eager + weights s "
        "| attnmap capture s | capture / eager | capture / SDPA |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['forward_sdpa_s']:.3f} | "
            f"{r['forward_eager_s']:.3f} | {r['attnmap_capture_s']:.3f} | "
            f"{ratio(r['attnmap_capture_s'], r['forward_eager_s'])} | "
            f"{ratio(r['attnmap_capture_s'], r['forward_sdpa_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-cells", type=float, default=2.0e7,
                    help="skip bertviz/CircuitsVis above this many attention weights")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    print(f"machine: {machine()}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, limit in _models(Path(tmp), max(args.tokens)):
            rows += bench_model(name, path, limit, args.tokens, args.repeat, args.max_cells)
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
