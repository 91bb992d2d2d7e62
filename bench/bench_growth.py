"""How each long-context figure grows with the length: bytes per token of every
representation and the time of every reader, 1k → 32k tokens, with the fitted exponent.

One Llama-shaped layer built directly from random queries and keys (8 query heads on 2 key
heads, head dimension 64, causal), carrying each row's log-sum-exp as a CPU capture keeps it
(torch's fused attention). Per length:

- q/k: the queries and keys a run keeps (float32), per token;
- run file: the ``.safetensors`` written by ``run.save`` (q/k, log-sum-exp and the mask);
- dense page: the viewer's layer chunk (every weight, one byte each, deflated), built up to
  ``--dense-up-to`` tokens;
- long page: the long representation's chunks (pyramid of block max/sum + top-k per row)
  at a fixed k, and its build time;
- census: ``head_score_parts`` blockwise from q/k;
- overview: the first ≤ 512 × 512 tile of one head, nothing cached.

    python bench/bench_growth.py [--lengths 1024 2048 ... 32768] [--k 32] [--dense-up-to 4096]

Bytes are per token of the whole layer (8 heads); times are seconds for the layer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import machine  # noqa: E402
from bench_tiles import long_run  # noqa: E402

from attnmap import tiles  # noqa: E402
from attnmap.analysis import head_score_parts  # noqa: E402
from attnmap.viewer import longpage, payload  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+",
                    default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--k", type=int, default=32, help="top-k per row of the long page")
    ap.add_argument("--dense-up-to", type=int, default=4096)
    args = ap.parse_args()
    print(f"# {machine()}; one causal layer, 8 heads / 2 key heads, head dim 64, random q/k; "
          f"long page top-{args.k}")
    cols = ("tokens", "q/k B/tok", "file B/tok", "dense B/tok", "long B/tok", "long s",
            "census s", "overview s")
    print(" | ".join(cols))
    rows: list[dict[str, float]] = []
    for n in args.lengths:
        run = long_run(n, lse=True)
        r: dict[str, float] = {"tokens": n}
        lay = run.stack().layers
        r["q/k B/tok"] = (lay.q[0].nbytes + lay.k[0].nbytes) / n
        with tempfile.TemporaryDirectory() as d:
            path = run.save(Path(d) / "run.safetensors")
            r["file B/tok"] = path.stat().st_size / n
        if n <= args.dense_up_to:
            chunk = payload.encode_layer(run, "self", 0)
            r["dense B/tok"] = len(chunk) / n
        data, r["long s"] = timed(lambda run=run: longpage.build(run, k=args.k))
        r["long B/tok"] = sum(len(c) for key, c in data.chunks if not key.startswith("mask")) / n
        _, r["census s"] = timed(lambda run=run: head_score_parts(run))
        _, r["overview s"] = timed(lambda run=run: tiles.overview(run, 0, 0,
                                                                  cache=tiles.TileCache()))
        rows.append(r)
        print(" | ".join("—" if c not in r else f"{r[c]:,.0f}" if c.endswith("B/tok") or
                         c == "tokens" else f"{r[c]:.3f}" for c in cols), flush=True)
    print("growth exponent a (value ≈ c·nᵃ, least squares in log-log over the lengths "
          "measured; bytes per token grow as n^(a))")
    for c in cols[1:]:
        pts = [(r["tokens"], r[c]) for r in rows if c in r and r[c] > 0]
        if len(pts) >= 2:
            a = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0]
            print(f"  {c}: {a:.2f} ({pts[0][0]:,}→{pts[-1][0]:,})")


if __name__ == "__main__":
    main()
