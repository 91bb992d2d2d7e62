"""Peak memory of capturing long inputs on a 12-layer × 12-head GPT-2-shaped model.

    python bench/bench_memory.py [--tokens 1024 2048 4096] [--store auto]

Each length runs in a fresh process (so peaks don't mix); the model is built from a config
(hidden size 768, like GPT-2 small) with a byte-level BPE tokenizer trained on the spot.
Reported: peak resident memory (VmHWM) of the whole process, after the capture and after
reading one layer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import attnmap, numpy as np

def peak_mb():
    # VmHWM starts afresh with each exec; ru_maxrss would carry the parent's peak over.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
from attnmap.capturing import get_model
n, store, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
loaded = get_model(path)
ids_text = ("the cat sat on the mat " * n)
tok = loaded.tokenizer
ids = tok(ids_text)["input_ids"][:n]
text = tok.decode(ids)
before = peak_mb()
t0 = time.perf_counter()
run = attnmap.capture(text, model=loaded, store=store, truncate=True)
t1 = time.perf_counter()
capture_peak = peak_mb()
one = run.layer(5)  # reading one layer computes it on demand in qk mode
t2 = time.perf_counter()
peak = peak_mb()
print(json.dumps({"tokens": len(run.tokens), "store": "qk" if run.stack().lazy else "weights",
                  "capture_s": t1 - t0, "layer_s": t2 - t1, "peak_mb": peak,
                  "capture_peak_mb": capture_peak,
                  "before_mb": before, "layer_shape": list(one.shape)}))
"""


def build_model(path: Path, n_positions: int) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from _models import train_tokenizer

    tok = train_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=768, n_layer=12,
                     n_head=12, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--store", default="auto", choices=["auto", "weights", "qk"])
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "gpt2-12x12", max(args.tokens))
        for n in args.tokens:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), args.store, str(model),
                 str(HERE.parent / "tests")],
                capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                     "PATH": "/usr/bin:/bin"},
            )
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(out.returncode)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['tokens']:>5} tokens  store={r['store']:<7}  peak {r['peak_mb']:7.0f} MB"
                  f" (capture {r['capture_peak_mb']:5.0f} MB)"
                  f"  (after model load {r['before_mb']:5.0f} MB)  capture {r['capture_s']:.1f}s"
                  f"  one layer {r['layer_s']:.2f}s", flush=True)
    return results


if __name__ == "__main__":
    main()
