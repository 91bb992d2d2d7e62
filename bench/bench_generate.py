"""attnmap.generate against plain model.generate on a GPT-2-shaped model (random weights).

    python bench/bench_generate.py [--new 256] [--long 2048] [--repeat 3]

The model: 6 layers × 6 heads, hidden size 384, 50,257-token vocabulary (the byte-level BPE
trained in tests/_models.py plus filler tokens, so the LM head and the per-step softmax cost
what GPT-2's do), 2,304 positions, built from a config.

1. Time for `--new` new tokens after a 16-token prompt, greedy: plain ``model.generate`` as
   the model is loaded (SDPA attention, no attentions returned) vs ``attnmap.generate``
   (every step's attention kept, top-5 predictions per step); median of `--repeat`, in one
   process, the same ids checked.
2. Peak resident memory (VmHWM) of one fresh process per mode at `--long` new tokens: plain
   generate, attnmap with store auto, weights, and qk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

from _common import machine  # noqa: E402

PROMPT = "The cat that sat on the mat was black, and the dog"

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import torch

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

import attnmap
from attnmap.capturing import get_model
from attnmap.generating import generate_kwargs
new, mode, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
loaded = get_model(path)
model, tok = loaded.model, loaded.tokenizer
prompt = sys.argv[5]
before = peak_mb()
t0 = time.perf_counter()
if mode == "plain":
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             min_new_tokens=new,
                             **generate_kwargs(model, tok, max_new_tokens=new))
    tokens = out.shape[1]
else:
    model.generation_config.min_new_tokens = new
    run = attnmap.generate(prompt, model=loaded, max_new_tokens=new, store=mode)
    tokens = len(run.tokens)
    layer = run.layer(-1)  # one layer read (computed from queries and keys in qk mode)
t1 = time.perf_counter()
print(json.dumps({"mode": mode, "tokens": tokens, "s": t1 - t0, "peak_mb": peak_mb(),
                  "before_mb": before}))
"""


def build_model(path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from _models import train_tokenizer

    tok = train_tokenizer()
    tok.add_tokens([f"filler{i}" for i in range(50257 - len(tok))])
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=2304, n_embd=384, n_layer=6, n_head=6,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def time_ratio(path: Path, new: int, repeat: int, device: str = "cpu") -> dict:
    import torch

    import attnmap
    from attnmap.capturing import get_model
    from attnmap.generating import generate_kwargs

    loaded = get_model(str(path), device=device)
    model, tok = loaded.model, loaded.tokenizer
    model.set_attn_implementation("sdpa")  # what a user's model.generate runs
    model.generation_config.min_new_tokens = new  # both write exactly `new` tokens
    ids = torch.tensor([tok(PROMPT)["input_ids"]], device=model.device)
    kw = generate_kwargs(model, tok, max_new_tokens=new)

    def plain():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    def ours():
        return attnmap.generate(PROMPT, model=loaded, max_new_tokens=new)

    run = ours()
    assert [t.id for t in run.tokens] == plain()[0].tolist(), "ids differ"
    # interleaved, so that load from other processes falls on both alike
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(repeat):
        for name, fn in (("plain", plain), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_plain, t_ours = statistics.median(times["plain"]), statistics.median(times["ours"])
    return {"new": new, "prompt": int(ids.shape[1]), "plain_s": t_plain, "attnmap_s": t_ours,
            "ratio": t_ours / t_plain}


def peak(path: Path, new: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(new), mode, str(path),
                          str(HERE.parent / "src"), PROMPT],
                         check=True, capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                              "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--long", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", nargs="*", default=["plain", "auto", "qk"])
    ap.add_argument("--no-time", action="store_true", help="only the peak-memory table")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the timing runs "
                    "(the memory table is always CPU resident memory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "gpt2-6x6")
        print(f"## attnmap.generate vs model.generate ({machine()})")
        t = None if args.no_time else time_ratio(path, args.new, args.repeat, args.device)
        if t is not None:
            print(f"GPT-2-shaped 6 layers × 6 heads, d=384, vocab 50,257; {t['prompt']}-token "
                  f"prompt, {t['new']} new tokens, greedy, median of {args.repeat}, on "
                  f"{args.device}")
            print(f"  model.generate (SDPA):  {t['plain_s']:.2f} s")
            print(f"  attnmap.generate:       {t['attnmap_s']:.2f} s")
            print(f"  ratio attnmap / plain:  {t['ratio']:.2f} (target ≤ 1.3)")
        if not args.modes:
            return
        print(f"\npeak resident memory, {args.long} new tokens, one fresh process each:")
        print("| mode | tokens | time s | peak MB |")
        print("|---|---:|---:|---:|")
        for mode in args.modes:
            r = peak(path, args.long, mode)
            name = "model.generate" if mode == "plain" else f"attnmap.generate store={mode}"
            print(f"| {name} | {r['tokens']} | {r['s']:.1f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
