"""Run every benchmark once and write bench/RESULTS.md.

    pip install -r bench/requirements.txt     # bertviz and CircuitsVis, for the comparison
    python bench/run_all.py [--quick]

Each benchmark also runs alone (see its own docstring). Numbers depend on the machine; the
file names the one they came from. Takes about 20 minutes on 2 cores (--quick: about 10).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_capture  # noqa: E402
import bench_memory  # noqa: E402
import bench_tools  # noqa: E402
from _common import machine  # noqa: E402


def _captured(fn, *args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args)
    text = buf.getvalue()
    print(text, end="", flush=True)
    return result, text


def _script(name: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True,
                         text=True, cwd=HERE.parent)
    text = out.stdout + (f"\n(exit {out.returncode}) {out.stderr[-500:]}" if out.returncode
                         else "")
    print(text, flush=True)
    return text.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args()
    repeat = "1" if args.quick else "3"
    sizes = ["64", "512", "1024"] if args.quick else ["64", "128", "256", "512", "1024"]
    tools, _ = _captured(bench_tools.main, ["--tokens", *sizes, "--repeat", repeat])
    cap, cap_text = _captured(bench_capture.main, ["--repeat", repeat, "--html-repeat",
                                                   "1" if args.quick else "2"])
    mem, mem_text = _captured(bench_memory.main, [])
    census = _script("bench_census.py")
    windows = _script("bench_long_windows.py")  # about 5 minutes on 2 cores
    browser = _script("bench_html.py", *(["--quick"] if args.quick else []))

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [
        "# Benchmarks",
        "",
        f"Made by `python bench/run_all.py{' --quick' if args.quick else ''}` on {when}, "
        f"machine: {machine()}. Times are medians of {repeat} runs unless noted; ratios are "
        "attnmap / the other tool (below 1 = attnmap smaller or faster).",
        "",
        "## Standalone HTML and capture, side by side with bertviz and CircuitsVis",
        "",
        "bertviz (`head_view`, `model_view`) and CircuitsVis (`attention_heads`, one call per "
        "layer, summed; its offline build with the JavaScript inlined) get the same attention "
        "tensors; export time is from tensors in hand to the page's text complete. Sizes marked "
        "*est.* were too big to build here and are extrapolated from the measured bytes per "
        "attention weight. Note that bertviz's page loads require.js and d3 from a CDN, so "
        "offline it stays blank.",
        "",
        bench_tools.markdown(tools),
        "",
        "## Whole commands, start-up and model load included",
        "",
        "```",
        cap_text.strip(),
        "```",
        "",
        "## Long inputs: peak memory (12 layers × 12 heads, GPT-2-shaped)",
        "",
        "| tokens | stored as | peak MB, capture | peak MB, after reading one layer | capture s |",
        "|---:|---|---:|---:|---:|",
        *[f"| {r['tokens']} | {r['store']} | {r['capture_peak_mb']:.0f} | {r['peak_mb']:.0f} | "
          f"{r['capture_s']:.1f} |" for r in mem],
        "",
        "Above 1 GiB of float32 weights a run keeps queries and keys and computes a layer when "
        "it is read (`store=\"qk\"`, `attnmap capture --store`).",
        "",
        "## Long inputs with sliding windows (issue: modern LLMs)",
        "",
        windows,
        "",
        "## Head census",
        "",
        "```",
        census,
        "```",
        "",
        "## In the browser (headless Chromium)",
        "",
        "```",
        browser,
        "```",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'}")
    del cap


if __name__ == "__main__":
    main()
