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


def log_sum_exp(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Each row's log-sum-exp as a capture on the CPU keeps it: from torch's fused causal
    attention (the same call that gives the layer's output), [head, query]."""
    import torch

    from attnmap import _qk

    qt = torch.from_numpy(q)[None]
    kt = torch.from_numpy(k)[None]
    _, lse = _qk._sdpa(type("M", (), {"is_causal": True})(), qt, kt, kt, None, DIM ** -0.5)
    assert lse is not None, "this torch gives no log-sum-exp"
    return np.ascontiguousarray(lse[0].numpy())


def long_run(n: int, seed: int = 0, lse: bool = False) -> AttentionRun:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((HEADS, n, DIM), dtype=np.float32)  # [head, query, dim]
    k = rng.standard_normal((KV_HEADS, n, DIM), dtype=np.float32)  # [kv_head, key, dim]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)  # [query, key] causal future
    layers = QKLayers([q], [k], [DIM ** -0.5], [mask],
                      logsumexp=[log_sum_exp(q, k)] if lse else None)
    # token ids drawn as words fall in text (Zipf, 50,000 of them): copies of a token, which
    # the census pairs up, as often as in prose, not n² of them as n equal tokens would give
    ids = (np.random.default_rng(seed + 1).zipf(1.2, n) - 1) % 50_000
    toks = [Token(text=f"w{i}", raw=f"w{i}", id=int(i)) for i in ids]
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
    ap.add_argument("--ab", type=int, default=0, metavar="N",
                    help="instead: alternate N times, at each length, a head's first view of "
                         "the run carrying the log-sum-exp and a warm view of the same head")
    args = ap.parse_args()
    if args.ab:
        return alternate(args)
    print(f"# {machine()}; head dim {DIM}, {HEADS} heads / {KV_HEADS} key heads, causal, "
          f"overview 512 × 512, reduce={args.reduce}")
    print(f"{'tokens':>7} {'block':>5} {'cold s':>7} {'warm s':>7} {'lse s':>7} "
          f"{'q/k MB':>7}")
    rows = []
    for n in args.lengths:
        run = long_run(n, lse=True)
        plain = long_run(n)  # the same queries and keys (same seed), no log-sum-exp
        colds, warms, firsts = [], [], []
        for r in range(args.repeat):
            cache = tiles.TileCache()
            view = partial(tiles.overview, plain, 0, r % HEADS, reduce=args.reduce, cache=cache)
            colds.append(timed(view))
            cache.clear("tile")
            warms.append(timed(view))
            cache = tiles.TileCache()
            firsts.append(timed(partial(tiles.overview, run, 0, r % HEADS,
                                        reduce=args.reduce, cache=cache)))
        block = tiles.overview_block(n, 512)
        qk_mb = (HEADS + KV_HEADS) * n * DIM * 4 / 1e6
        cold, warm = float(np.median(colds)), float(np.median(warms))
        first = float(np.median(firsts))
        rows.append((n, cold, warm, first))
        print(f"{n:>7} {block:>5} {cold:>7.3f} {warm:>7.3f} {first:>7.3f} {qk_mb:>7.1f}",
              flush=True)
    print("cold: nothing cached, normalisers found in a pass of their own; warm: normalisers "
          "cached; lse: nothing cached, the run carries the capture's log-sum-exp")
    if len(rows) > 1:
        x = np.log([r[0] for r in rows])
        for i, what in ((1, "cold"), (2, "warm"), (3, "lse")):
            slope = np.polyfit(x, np.log([r[i] for r in rows]), 1)[0]
            print(f"growth exponent ({what}, {rows[0][0]}→{rows[-1][0]}): {slope:.2f}")


def alternate(args: argparse.Namespace) -> None:
    """First views (log-sum-exp carried, nothing cached but the mask's spans, which a run
    keeps) and warm views (normalisers cached), alternated in one process: this shared VM's
    speed drifts by ±20 % over a minute, so the two are compared side by side."""
    print(f"# {machine()}; overview 512 × 512, reduce={args.reduce}, {args.ab} alternations")
    for n in args.lengths:
        run, plain = long_run(n, lse=True), long_run(n)
        run.stack().layers.spans(0)
        plain.stack().layers.spans(0)
        cache = tiles.TileCache()
        tiles.overview(plain, 0, 0, reduce=args.reduce, cache=cache)  # head 0's normalisers
        first, warm = [], []
        for i in range(args.ab):
            cache.clear("tile")
            warm.append(timed(partial(tiles.overview, plain, 0, 0, reduce=args.reduce,
                                      cache=cache)))
            first.append(timed(partial(tiles.overview, run, 0, i % HEADS, reduce=args.reduce,
                                       cache=tiles.TileCache())))
        print(f"{n:>7} tokens: first view (lse) median {np.median(first):.3f} s "
              f"({min(first):.3f}–{max(first):.3f}); warm median {np.median(warm):.3f} s "
              f"({min(warm):.3f}–{max(warm):.3f})", flush=True)


if __name__ == "__main__":
    main()
