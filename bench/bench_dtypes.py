"""Precision of each dtype: row sums and distance to float32, bundled MiniLM on the CPU.

    python bench/bench_dtypes.py
"""

from __future__ import annotations

import numpy as np

import attnmap

TEXT = ("The cat that sat on the mat was black. It had been there all day, watching the birds "
        "in the garden and the people who walked past the window.")


def main() -> None:
    ref = attnmap.capture(TEXT, torch_dtype="float32")
    print(f"bundled all-MiniLM-L6-v2, {len(ref.tokens)} tokens, CPU")
    print("| dtype | max abs(row sum − 1) | max abs(weight − float32 weight) |")
    print("|---|---|---|")
    for dtype in ("float32", "bfloat16", "float16"):
        run = ref if dtype == "float32" else attnmap.capture(TEXT, torch_dtype=dtype)
        sums = max(float(np.abs(np.where(run.mask(i), 0, run.layer(i)).sum(-1) - 1).max())
                   for i in range(run.n_layers))
        diff = max(float(np.abs(run.layer(i) - ref.layer(i)).max())
                   for i in range(run.n_layers))
        print(f"| {dtype} | {sums:.1e} | {diff:.1e} |")


if __name__ == "__main__":
    main()
