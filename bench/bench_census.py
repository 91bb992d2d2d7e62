"""Time the head census: all scores for all heads of a 1,024-token, 12 × 12 run.

Target: ≤ 1 s. The run is synthetic (random causal rows, tokens from a 300-word vocabulary
so that duplicate and induction scores have many rows to score), built in memory.

    python bench/bench_census.py [--tokens 1024] [--layers 12] [--heads 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from attnmap import AttentionRun, AttentionStack, Token
from attnmap.analysis import head_scores


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    run = synthetic_run(args.tokens, args.layers, args.heads)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        entries = head_scores(run)
        times.append(time.perf_counter() - t0)
    assert len(entries) == args.layers * args.heads
    best, median = min(times), float(np.median(times))
    print(f"head_scores: {args.tokens} tokens, {args.layers} layers × {args.heads} heads: "
          f"best {best:.3f} s, median {median:.3f} s of {args.repeat} (target ≤ 1 s) "
          f"{'OK' if median <= 1.0 else 'SLOW'}")


if __name__ == "__main__":
    main()
