"""Overview tiles of one head of a long run that keeps queries and keys.

The run is built directly from random queries and keys of a Llama-shaped layer (head
dimension 64, 8 query heads sharing 2 key heads, causal mask, no RoPE: positions do not
change the cost), so lengths far beyond what a capture here allows can be timed. Cold: no
normalisers cached (the mask's row extents, the softmax normalisers of the head and the tile
in one pass); warm: normalisers cached, the tile itself computed again.

    python bench/bench_tiles.py [--lengths 4096 8192 16384 32768] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import machine  # noqa: E402

from attnmap import tiles  # noqa: E402
from attnmap.qkweights import QKLayers  # noqa: E402
from attnmap.run import AttentionRun, AttentionStack  # noqa: E402
from attnmap.tokens import Token  # noqa: E402

HEADS, KV_HEADS, DIM = 8, 2, 64


def long_run(n: int, seed: int = 0) -> AttentionRun:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((HEADS, n, DIM), dtype=np.float32)  # [head, query, dim]
    k = rng.standard_normal((KV_HEADS, n, DIM), dtype=np.float32)  # [kv_head, key, dim]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)  # [query, key] causal future
    layers = QKLayers([q], [k], [DIM ** -0.5], [mask])
    toks = [Token(text="x", raw="x", id=0) for _ in range(n)]
    st = AttentionStack("self", layers, mask)
    return AttentionRun(text="", tokens=toks, stacks={"self": st},
                        model={"id": "random-llama-shaped", "causal": True})


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reduce", default="max", choices=tiles.REDUCES)
    args = ap.parse_args()
    print(f"# {machine()}; head dim {DIM}, {HEADS} heads / {KV_HEADS} key heads, causal, "
          f"overview 512 × 512, reduce={args.reduce}")
    print(f"{'tokens':>7} {'block':>5} {'cold s':>7} {'warm s':>7} {'q/k MB':>7}")
    rows = []
    for n in args.lengths:
        run = long_run(n)
        colds, warms = [], []
        for r in range(args.repeat):
            cache = tiles.TileCache()
            view = partial(tiles.overview, run, 0, r % HEADS, reduce=args.reduce, cache=cache)
            colds.append(timed(view))
            cache.clear("tile")
            warms.append(timed(view))
        block = tiles.overview_block(n, 512)
        qk_mb = (HEADS + KV_HEADS) * n * DIM * 4 / 1e6
        cold, warm = float(np.median(colds)), float(np.median(warms))
        rows.append((n, cold, warm))
        print(f"{n:>7} {block:>5} {cold:>7.3f} {warm:>7.3f} {qk_mb:>7.1f}", flush=True)
    if len(rows) > 1:
        x = np.log([r[0] for r in rows])
        for i, what in ((1, "cold"), (2, "warm")):
            slope = np.polyfit(x, np.log([r[i] for r in rows]), 1)[0]
            print(f"growth exponent ({what}, {rows[0][0]}→{rows[-1][0]}): {slope:.2f}")


if __name__ == "__main__":
    main()
