"""Time the head census: all scores for all heads of a 1,024-token, 12 × 12 run.

Target: ≤ 1 s. The run is synthetic (random causal rows, tokens from a 300-word vocabulary
so that duplicate and induction scores have many rows to score), built in memory.

With ``--qk`` the run is stored as queries and keys (random, 64 dimensions per head, as a
run captured with ``store="qk"``), so the census computes every layer from them a block of
rows at a time; target at 4,096 tokens × 12 × 12: ≤ 10 s. Peak memory of the process is
printed too.

    python bench/bench_census.py [--tokens 1024] [--layers 12] [--heads 12] [--repeat 3]
    python bench/bench_census.py --qk --tokens 4096 --repeat 1
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.analysis import head_scores
from attnmap.qkweights import QKLayers


def synthetic_run(n: int, layers: int, heads: int, seed: int = 0) -> AttentionRun:
    rng = np.random.default_rng(seed)
    causal = np.tril(np.ones((n, n), dtype=np.float32))
    stack = []
    for _ in range(layers):
        a = rng.random((heads, n, n), dtype=np.float32) ** 4 * causal  # [head, query, key]
        a /= a.sum(-1, keepdims=True)
        stack.append(a)
    ids = rng.integers(0, 300, size=n)
    tokens = [Token(text=f"w{i}", raw=f"w{i}", id=int(i), special=k == 0)
              for k, i in enumerate(ids)]
    masked = np.triu(np.ones((n, n), dtype=bool), 1)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks={"self": AttentionStack("self", stack, masked)},
                        model={"id": "synthetic", "causal": True})


def synthetic_qk_run(n: int, layers: int, heads: int, dim: int = 64, seed: int = 0
                     ) -> AttentionRun:
    rng = np.random.default_rng(seed)
    q = [rng.normal(size=(heads, n, dim)).astype(np.float32) for _ in range(layers)]
    k = [rng.normal(size=(heads, n, dim)).astype(np.float32) for _ in range(layers)]
    masked = np.triu(np.ones((n, n), dtype=bool), 1)
    ids = rng.integers(0, 300, size=n)
    tokens = [Token(text=f"w{i}", raw=f"w{i}", id=int(i), special=j == 0)
              for j, i in enumerate(ids)]
    qk = QKLayers(q, k, [dim ** -0.5] * layers, masked)
    return AttentionRun(text=" ".join(t.text for t in tokens), tokens=tokens,
                        stacks={"self": AttentionStack("self", qk, masked)},
                        model={"id": "synthetic-qk", "causal": True})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--qk", action="store_true", help="a run stored as queries and keys")
    args = p.parse_args()
    make = synthetic_qk_run if args.qk else synthetic_run
    run = make(args.tokens, args.layers, args.heads)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        entries = head_scores(run)
        times.append(time.perf_counter() - t0)
    assert len(entries) == args.layers * args.heads
    best, median = min(times), float(np.median(times))
    target = 10.0 if args.qk else 1.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    print(f"head_scores{' (q/k)' if args.qk else ''}: {args.tokens} tokens, {args.layers} "
          f"layers × {args.heads} heads: best {best:.3f} s, median {median:.3f} s of "
          f"{args.repeat} (target ≤ {target:g} s) {'OK' if median <= target else 'SLOW'}; "
          f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
