"""Time the token alignment of `attnmap diff`: the bit-parallel LCS attnmap uses, the
O(n·m) Python LCS table it replaced, and difflib's matching blocks (fast, but not an LCS).

Two inputs per size: "text" is the bench paragraph cut to n tokens of the bundled model's
tokenizer, B the same with every 40th word replaced (the paragraph repeats, as pasted or
probe text does); "zipf" is n random token ids with Zipf frequencies, B with 24 random
insertions, deletions and substitutions. Prints a table (pairs found: more is better, the
LCS is the most); asserts nothing.

    python bench/bench_diff.py [--tokens 128 256 512 1024 4096] [--table-max 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import difflib
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_time, text_of_tokens  # noqa: E402

from attnmap.diff import align  # noqa: E402
from attnmap.models import bundled_model_path  # noqa: E402


def lcs_table(a: list[Any], b: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The alignment attnmap used before: a full LCS length table in Python, then one walk
    (the same walk align takes, so the pairs must be equal)."""
    n, m = len(a), len(b)
    lengths = np.zeros((n + 1, m + 1), dtype=np.int32)  # [i, j]: LCS of a[i:], b[j:]
    for i in range(n - 1, -1, -1):
        row, below = lengths[i], lengths[i + 1]
        ai = a[i]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if ai == b[j] else max(below[j], row[j + 1])
    ia, ib = [], []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            ia.append(i)
            ib.append(j)
            i += 1
            j += 1
        elif lengths[i + 1, j] >= lengths[i, j + 1]:
            i += 1
        else:
            j += 1
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def text_pair(tokenizer: Any, n: int) -> tuple[list[int], list[int]]:
    text = text_of_tokens(tokenizer, n)
    words = text.split()
    edited = " ".join("lantern" if k % 40 == 20 else w for k, w in enumerate(words))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # longer than the model's maximum: only ids needed
        return tokenizer(text)["input_ids"], tokenizer(edited)["input_ids"]


def zipf_pair(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    a = rng.choices(range(5000), weights=[1 / r for r in range(1, 5001)], k=n)
    b = list(a)
    for _ in range(24):
        op, p = rng.choice("ids"), rng.randrange(len(b))
        if op == "i":
            b.insert(p, rng.randrange(6000))
        elif op == "d":
            del b[p]
        else:
            b[p] = rng.randrange(6000)
    return a, b


def matching_blocks(a: list[Any], b: list[Any]) -> int:
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    return sum(size for _, _, size in blocks)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[128, 256, 512, 1024, 4096])
    p.add_argument("--table-max", type=int, default=1024,
                   help="time the Python table only up to this many tokens (it is O(n·m))")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    rows = []
    print(f"machine: {machine()}")
    print(f"{'input':>5} {'tokens A/B':>11} | {'attnmap align':>17} | {'LCS table':>15} | "
          f"{'difflib blocks':>17}")
    for n in args.tokens:
        for kind, (a, b) in (("text", text_pair(tokenizer, n)), ("zipf", zipf_pair(n))):
            new = align(a, b)
            t_new = median_time(lambda: align(a, b), args.repeat)  # noqa: B023
            t_dl = median_time(lambda: matching_blocks(a, b), args.repeat)  # noqa: B023
            row = {"input": kind, "tokens_a": len(a), "tokens_b": len(b),
                   "pairs": len(new[0]), "align_s": t_new,
                   "difflib_pairs": matching_blocks(a, b), "difflib_s": t_dl,
                   "table_s": None, "table_same": None}
            if n <= args.table_max:
                old = lcs_table(a, b)
                row["table_same"] = all(np.array_equal(x, y) for x, y in zip(old, new))
                row["table_s"] = median_time(lambda: lcs_table(a, b), args.repeat)  # noqa: B023
            rows.append(row)
            table = ("—" if row["table_s"] is None else
                     f"{row['table_s'] * 1e3:7.1f} ms {'same' if row['table_same'] else 'DIFF'}")
            print(f"{kind:>5} {len(a):>5}/{len(b):<5} | {len(new[0]):>5} {t_new * 1e3:7.2f} ms | "
                  f"{table:>15} | {row['difflib_pairs']:>5} {t_dl * 1e3:7.2f} ms")
    return rows


if __name__ == "__main__":
    main()
