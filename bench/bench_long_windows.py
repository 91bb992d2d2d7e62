"""Long inputs with sliding windows: `capture --store qk` on a Mistral-shaped model.

    python bench/bench_long_windows.py [--tokens 8192] [--small 2048] [--window 4096]

The model is Mistral's architecture built from a config with random weights, kept small
enough for a 2-core machine: hidden size 512, 4 layers, 8 query heads sharing 2 key/value
heads (head_dim 64), a 4,096-token sliding window on every layer (as in Mistral 7B v0.1),
32,768 positions; the vocabulary is a byte-level BPE trained on the spot
(``tests/_models.py``). The text is cut to exactly `--tokens` tokens.

Each measurement runs in a fresh process, so peaks don't mix; peak memory is that process's
VmHWM, model load (torch included) counted:

* a plain SDPA forward of the same bare transformer on the same ids (no weights kept);
* ``attnmap.capture(text, model=model, tokenizer=tok, store="qk")``;
* reading one layer's full weights ``[head, query, key]`` from that run, and a windowed
  layer's mask (with a check that it hides every key 4,096 or more positions back);
* at `--small` tokens, where they fit, the same SDPA forward and capture beside transformers'
  eager forward with ``output_attentions=True``, for a measured ratio (and a parity check
  of one layer between the two).

What eager weights would take at `--tokens` (4 bytes × layers × heads × n²) is computed,
for this model and for Mistral 7B's 32 layers × 32 heads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import PARAGRAPH, machine  # noqa: E402

SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             max_position_embeddings=32768)
MISTRAL_7B = dict(layers=32, heads=32, kv_heads=8, head_dim=128)
GB = 1e9


def peak_mb() -> float:
    # VmHWM starts afresh with each exec; ru_maxrss would carry the parent's peak over.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- the parent: model, text, one child per measurement -----------------------------------

def build_model(path: Path, window: int) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from _models import train_tokenizer

    tok = train_tokenizer()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), sliding_window=window,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **SHAPE)
    MistralForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def text_of_exactly(tok, n: int) -> str:
    """A text the tokenizer turns into exactly `n` tokens: `n` ids cut from a long repetition,
    decoded, and kept when they encode back to `n` (a cut inside a word may not)."""
    ids = tok(PARAGRAPH * (n // 20 + 10))["input_ids"]
    for start in range(64):
        text = tok.decode(ids[start:start + n])
        if len(tok(text)["input_ids"]) == n:
            return text
    raise SystemExit(f"found no text of exactly {n} tokens")


def child(mode: str, n: int, model_dir: Path, text_file: Path, dump: Path | None,
          window: int) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(n),
            str(model_dir), str(text_file), str(dump or ""), str(window)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{mode} at {n} tokens failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def eager_bytes(layers: int, heads: int, n: int) -> int:
    return 4 * layers * heads * n * n


def qk_bytes(layers: int, heads: int, kv_heads: int, head_dim: int, n: int) -> int:
    return 4 * layers * (heads + kv_heads) * n * head_dim


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--small", type=int, default=2048,
                    help="length for the measured comparison with eager weights (0: skip)")
    ap.add_argument("--window", type=int, default=4096)
    args = ap.parse_args(argv)
    layers, heads = SHAPE["num_hidden_layers"], SHAPE["num_attention_heads"]
    kv, hd = SHAPE["num_key_value_heads"], SHAPE["head_dim"]
    given = sys.argv[1:] if argv is None else argv
    res: dict = {"tokens": args.tokens, "small": args.small, "window": args.window,
                 "command": " ".join(["python bench/bench_long_windows.py", *given])}
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        model_dir = build_model(Path(tmp) / "mistral-shaped", args.window)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        rows = []
        for n in [args.tokens] + ([args.small] if args.small else []):
            text_file = Path(tmp) / f"text{n}.txt"
            text_file.write_text(text_of_exactly(tok, n), encoding="utf-8")
            modes = ["sdpa", "qk"] + (["eager"] if n == args.small else [])
            dump = Path(tmp) if n == args.small else None
            for mode in modes:
                r = child(mode, n, model_dir, text_file, dump, args.window)
                r["mode"], r["tokens"] = mode, n
                rows.append(r)
                print(f"  {mode:<5} {n:>5} tokens: {r['time_s']:.2f} s, peak {r['peak_mb']:.0f} MB"
                      f" (model loaded {r['before_mb']:.0f} MB)", file=sys.stderr, flush=True)
        if args.small:
            import numpy as np

            a, b = np.load(Path(tmp) / "qk.npy"), np.load(Path(tmp) / "eager.npy")
            res["parity_small"] = float(np.abs(a - b).max())
    res["rows"] = rows
    res["eager_bytes"] = eager_bytes(layers, heads, args.tokens)
    res["qk_bytes"] = qk_bytes(layers, heads, kv, hd, args.tokens)
    res["eager_bytes_7b"] = eager_bytes(MISTRAL_7B["layers"], MISTRAL_7B["heads"], args.tokens)
    res["qk_bytes_7b"] = qk_bytes(*MISTRAL_7B.values(), args.tokens)
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    n, small, w = res["tokens"], res["small"], res["window"]
    rows = {(r["mode"], r["tokens"]): r for r in res["rows"]}
    sd, qk = rows[("sdpa", n)], rows[("qk", n)]
    L, H = SHAPE["num_hidden_layers"], SHAPE["num_attention_heads"]
    lines = [
        f"Made by `{res['command']}`. Mistral-shaped model, random weights: {L} layers × {H} heads "
        f"({SHAPE['num_key_value_heads']} key/value heads, head_dim {SHAPE['head_dim']}, "
        f"hidden {SHAPE['hidden_size']}), sliding window {w:,} on every layer; float32 on the "
        f"CPU ({machine()}). One fresh process per row; peak = VmHWM, model load included.",
        "",
        "| what | tokens | time s | peak MB | peak MB after model load, before the work |",
        "|---|---:|---:|---:|---:|",
        f"| plain SDPA forward (no weights kept) | {n:,} | {sd['time_s']:.2f} | "
        f"{sd['peak_mb']:.0f} | {sd['before_mb']:.0f} |",
        f"| `attnmap.capture(..., store=\"qk\")` | {n:,} | {qk['time_s']:.2f} | "
        f"{qk['peak_mb']:.0f} | {qk['before_mb']:.0f} |",
        f"| … then read layer {qk['layer']}'s weights {qk['layer_shape']} | {n:,} | "
        f"{qk['layer_s']:.2f} | {qk['layer_peak_mb']:.0f} | |",
        f"| … then read layer {qk['layer']}'s mask (windowed) | {n:,} | {qk['mask_s']:.4f} | "
        f"{qk['mask_peak_mb']:.0f} | |",
    ]
    if small:
        for mode, what in [("sdpa", "plain SDPA forward (no weights kept)"),
                           ("qk", "`attnmap.capture(..., store=\"qk\")`"),
                           ("eager", "eager forward, `output_attentions=True`")]:
            r = rows[(mode, small)]
            lines.append(f"| {what} | {small:,} | {r['time_s']:.2f} | {r['peak_mb']:.0f} | "
                         f"{r['before_mb']:.0f} |")
    eb, qb = res["eager_bytes"], res["qk_bytes"]
    qp = qk["peak_mb"] * 2**20  # VmHWM is in KiB; "MB" here are MiB, as in bench_memory
    lines += [
        "",
        f"- Eager weights at {n:,} tokens would need 4 B × {L} layers × {H} heads × {n:,}² = "
        f"**{eb / GB:.1f} GB** ({eb / 2**30:.1f} GiB) for the weights alone; the qk capture "
        f"peaked at {qp / GB:.2f} GB for the whole process, model included: "
        f"**{qp / eb:.2f}×** what the weights alone would take (eager weights / qk peak = "
        f"{eb / qp:.1f}). Its queries and keys are {qb / GB:.3f} GB; its mask (one, shared by the "
        f"layers) {n * n / GB:.3f} GB as bool.",
        f"- Capture / plain SDPA forward at {n:,} tokens: time "
        f"{qk['time_s'] / sd['time_s']:.2f}×, peak memory {qk['peak_mb'] / sd['peak_mb']:.2f}×.",
        f"- Mistral 7B itself (32 layers × 32 heads, 8 key/value heads, head_dim 128) at "
        f"{n:,} tokens: eager weights {res['eager_bytes_7b'] / GB:.0f} GB, queries and keys "
        f"{res['qk_bytes_7b'] / GB:.1f} GB (float32).",
    ]
    if small:
        e, q = rows[("eager", small)], rows[("qk", small)]
        lines.append(
            f"- Measured at {small:,} tokens: eager `output_attentions` peaked at "
            f"{e['peak_mb']:.0f} MB ({eager_bytes(L, H, small) / GB:.2f} GB of weights), the "
            f"qk capture at {q['peak_mb']:.0f} MB: eager / qk = "
            f"{e['peak_mb'] / q['peak_mb']:.2f}× memory, {e['time_s'] / q['time_s']:.2f}× "
            f"time; layer {q['layer']} read from q/k vs eager: max |Δ| = "
            f"{res['parity_small']:.1e}.")
    lines.append(
        f"- Sanity (printed, not asserted): the run is {'lazy (q/k)' if qk['lazy'] else 'NOT lazy'}"
        f"; layer {qk['layer']}'s mask {'equals' if qk['mask_is_window'] else 'DIFFERS FROM'} "
        f"the causal {w:,}-token window (keys {w:,} or more back hidden: "
        f"{'yes' if qk['far_hidden'] else 'NO'}); the last query sees {qk['last_row_visible']:,} "
        f"keys; weights on hidden keys: max {qk['hidden_weight_max']:.1e}; rows sum to 1 "
        f"within {qk['row_sum_err']:.1e}.")
    return "\n".join(lines)


# --- a child: one measurement in a fresh process ------------------------------------------

def run_child(mode: str, n: int, model_dir: str, text_file: str, dump: str,
              window: int) -> dict:
    sys.path.insert(0, str(HERE.parent / "src"))  # measure this checkout's attnmap
    import numpy as np
    import torch
    from transformers import AutoTokenizer, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = MistralForCausalLM.from_pretrained(
        model_dir, attn_implementation="sdpa" if mode == "sdpa" else "eager").eval()
    text = Path(text_file).read_text(encoding="utf-8")
    ids = torch.tensor([tok(text)["input_ids"]])
    assert ids.shape[1] == n, ids.shape
    warm = tok.decode(ids[0, :32].tolist())  # one-time costs (kernels, lazy imports) go first
    if mode == "qk":
        import attnmap

        attnmap.capture(warm, model=model, tokenizer=tok, store="qk")
    else:
        with torch.no_grad():
            model.model(input_ids=ids[:, :32], output_attentions=mode == "eager")
    r: dict = {"before_mb": peak_mb()}
    if mode in ("sdpa", "eager"):
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              output_attentions=mode == "eager")
            r["time_s"] = time.perf_counter() - t0
        r["peak_mb"] = peak_mb()
        if mode == "eager" and dump:
            np.save(Path(dump) / "eager.npy", out.attentions[-1][0].float().numpy())
        return r

    t0 = time.perf_counter()
    run = attnmap.capture(text, model=model, tokenizer=tok, store="qk")
    r["time_s"] = time.perf_counter() - t0
    r["peak_mb"] = peak_mb()
    assert len(run.tokens) == n
    layer = run.n_layers - 1
    t0 = time.perf_counter()
    w = run.layer(layer)  # [head, query, key] float32, computed from q and k
    r["layer_s"] = time.perf_counter() - t0
    r["layer_peak_mb"] = peak_mb()
    t0 = time.perf_counter()
    m = run.mask(layer)  # [query, key], True = hidden
    r["mask_s"] = time.perf_counter() - t0
    r["mask_peak_mb"] = peak_mb()
    q_pos = np.arange(n)[:, None]
    k_pos = np.arange(n)[None, :]
    expected = (k_pos > q_pos) | (q_pos - k_pos >= window)  # the future, and keys ≥ window back
    r.update(layer=layer, layer_shape=list(w.shape), lazy=bool(run.stack().lazy),
             mask_is_window=bool(np.array_equal(m, expected)),
             far_hidden=bool(m[q_pos - k_pos >= window].all()),
             last_row_visible=int((~m[-1]).sum()),
             hidden_weight_max=float(max(w[h][m].max(initial=0.0) for h in range(len(w)))),
             row_sum_err=float(np.abs(w.sum(axis=-1) - 1).max()))
    if dump:
        np.save(Path(dump) / "qk.npy", w)
    return r


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, n, model_dir, text_file, dump, window = sys.argv[2:8]
        print(json.dumps(run_child(mode, int(n), model_dir, text_file, dump, int(window))))
    else:
        main()
