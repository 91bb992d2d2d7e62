"""The standalone page at long lengths, by hand: ``python bench/bench_long_page.py
[--tokens 1024 2048 4096 8192] [--dense-up-to 2048] [--save DIR]``, or on pages built before
(``--save`` keeps them, with their build facts beside them): ``python bench/bench_long_page.py
--page DIR/long8192.html``, or only `attnmap html` from a saved run:
``python bench/bench_long_page.py --cli run.safetensors [--repeat 3]``; such a run file of
n tokens (the model below, captured with ``store="qk"``): ``python bench/bench_long_page.py
--make-run 4095 run.safetensors``.

A GPT-2-shaped 12-layer × 12-head model with random weights (n_embd 768, built from a config),
captured with ``store="qk"`` at each length. For each: the long page (``attnmap.viewer.
longpage``) — build time, size, bytes per token, the k its budget chose — and, in headless
Chromium, the first heatmap after opening it (from navigation start), head switches, pans and
zooms (the viewer's own ``window.__attnmapTiming``: request → finished canvas), and the mean
and max of heads: zoomed in (after the zooms and pans, exact cells: every head's kept cells;
then on a layer not visited yet) and on the whole matrix of a layer not visited yet. Where
the dense page can still be built (``--dense-up-to``), its size and first heatmap too. Last,
the growth exponent of each figure over the lengths measured (size ≈ c·nᵃ).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, text_of_tokens  # noqa: E402
from bench_html import CHROMIUM, poll  # noqa: E402


def build_model(path: Path, n: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import _models

    tok = _models.train_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n, n_embd=768, n_layer=12, n_head=12,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _models._save(GPT2LMHeadModel(cfg).eval(), tok, path)


def draws(page) -> int:
    return int(page.get_attribute(".attnmap", "data-draws"))


def timed(page, action) -> float:
    """Run `action`, wait for the draw it starts; the viewer's own time for it (ms)."""
    n = draws(page)
    action()
    poll(page, f"document.querySelector('.attnmap').dataset.draws > {n}", 120)
    return float(page.evaluate("window.__attnmapTiming.at(-1).ms"))


def in_browser(browser, path: Path, long: bool) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(path.as_uri())
    poll(page, "document.querySelector('.attnmap')?.dataset.draws >= 1", 300)
    first = page.evaluate("window.__attnmapTiming[0]")
    out = {"first_ms": first["at"]}
    if long:
        page.focus(".attnmap")
        out["head_ms"] = statistics.median(
            timed(page, lambda h=h: page.select_option(".am-head", str(h))) for h in range(1, 6))
        out["zoom_ms"] = statistics.median(timed(page, lambda: page.keyboard.press("+"))
                                           for _ in range(4))
        out["pan_ms"] = statistics.median(
            timed(page, lambda: page.keyboard.press("Shift+ArrowRight")) for _ in range(4))
        out["mean_ms"] = timed(page, lambda: page.select_option(".am-head", "mean"))
        out["max_ms"] = timed(page, lambda: page.select_option(".am-head", "max"))
        timed(page, lambda: page.select_option(".am-head", "mean"))
        layers = page.eval_on_selector(".am-layer", "e => e.options.length")
        # zoomed in, the mean of a layer not visited yet: every head decoded
        out["mean_zoomed_layer_ms"] = timed(
            page, lambda: page.select_option(".am-layer", str(layers - 1)))
        page.keyboard.press("0")  # back to the whole matrix
        poll(page, "document.querySelector('.attnmap').__attnmap.lod.tile.block > 1", 60)
        page.wait_for_timeout(1000)
        out["mean_layer_ms"] = timed(page, lambda: page.select_option(".am-layer", str(layers - 2)))
        out["max_layer_ms"] = timed(page, lambda: page.select_option(".am-head", "max"))
    page.close()
    return out


MODULE = '<script type="text/plain" id="attnmap-module">\n'


def with_todays_viewer(page: Path, tmp: Path) -> Path:
    """A copy of `page` with the viewer module it inlines replaced by the one built now (so a
    page built once measures later changes to the viewer)."""
    from attnmap.viewer.html import static_text

    text = page.read_text(encoding="utf-8")
    a = text.index(MODULE) + len(MODULE)
    b = text.index("\n</script>", a)
    out = tmp / page.name
    out.write_text(text[:a] + static_text("viewer.js") + text[b:], encoding="utf-8")
    return out


def cli(run_file: str, repeat: int) -> None:
    """`attnmap html --run RUN_FILE` in a fresh process, `repeat` times: wall and CPU time
    (user + system), peak memory, and the load average around it (2 shared cores: others'
    jobs inflate the wall time; CPU time less so)."""
    import os
    import resource
    import subprocess

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            load0 = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "attnmap", "html", "--run", run_file, "-o",
                            str(Path(tmp) / "page.html"), "-q"], check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            size = (Path(tmp) / "page.html").stat().st_size
            print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (user + sys), peak "
                  f"{after.ru_maxrss / 1024:.0f} MB, page {size / 1e6:.1f} MB, load average "
                  f"{load0:.1f} → {os.getloadavg()[0]:.1f}", flush=True)


def make_run(n: int, out: Path) -> None:
    """Capture n tokens of the bench's model (store="qk") and save the run to `out`."""
    from transformers import AutoTokenizer

    import attnmap

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "m", n)
        tok = AutoTokenizer.from_pretrained(model)
        run = attnmap.capture(text_of_tokens(tok, n), model=model, store="qk")
        run.save(out)
    print(f"{out}: {len(run.tokens):,} tokens, {out.stat().st_size / 1e6:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--dense-up-to", type=int, default=2048)
    ap.add_argument("--save", type=Path, help="keep the built long pages (and their build "
                    "facts, long<n>.json) in this folder")
    ap.add_argument("--page", type=Path, nargs="+", help="measure these long pages (built with "
                    "--save) instead of building")
    ap.add_argument("--make-run", nargs=2, metavar=("TOKENS", "RUN_FILE"),
                    help="capture TOKENS tokens of the model below (store='qk') into RUN_FILE")
    ap.add_argument("--cli", metavar="RUN_FILE",
                    help="only time `attnmap html --run RUN_FILE` (a run saved by capture)")
    ap.add_argument("--repeat", type=int, default=3, help="--cli: how many times")
    args = ap.parse_args()
    if args.make_run:
        return make_run(int(args.make_run[0]), Path(args.make_run[1]))
    if args.cli:
        return cli(args.cli, args.repeat)

    from playwright.sync_api import sync_playwright

    import attnmap
    from attnmap.viewer import html, longpage

    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--headless=new", "--disable-gpu"])
        for built in args.page or []:
            facts = json.loads(built.with_suffix(".json").read_text())  # written by --save
            path = with_todays_viewer(built, Path(tmp))
            row = {**facts, "bytes": built.stat().st_size, **in_browser(browser, path, True)}
            rows.append(row)
            print(row, flush=True)
        for_build = [] if args.page else args.tokens
        model = None if not for_build else build_model(Path(tmp) / "m", max(args.tokens))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model) if model else None
        for n in for_build:
            run = attnmap.capture(text_of_tokens(tok, n), model=model, store="qk")
            t0 = time.perf_counter()
            data = longpage.build(run, encode=html.b85encode)  # as `attnmap html` does
            path = (args.save or Path(tmp)) / f"long{n}.html"
            path.parent.mkdir(parents=True, exist_ok=True)
            html.write_long_html(data, path, {})
            build_s = time.perf_counter() - t0
            path = path
            facts = {"n": len(run.tokens), "k": data.k, "block": data.block, "build_s": build_s}
            path.with_suffix(".json").write_text(json.dumps(facts))
            row = {**facts, "bytes": path.stat().st_size, **in_browser(browser, path, True)}
            if n <= args.dense_up_to:
                t0 = time.perf_counter()
                dpath = Path(tmp) / f"dense{n}.html"
                html.to_html(run, dpath, representation="dense")
                row["dense_s"] = time.perf_counter() - t0
                row["dense_bytes"] = dpath.stat().st_size
                row["dense_first_ms"] = in_browser(browser, dpath, False)["first_ms"]
            rows.append(row)
            print(row, flush=True)
        browser.close()
    print("\n| tokens | k | long page | bytes/token | build | first heatmap | head switch | "
          "zoom | pan | mean / max of heads (zoomed) | mean (zoomed, new layer) | "
          "mean / max (new layer, whole matrix) | dense page | dense first heatmap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        dense = (f"{r['dense_bytes'] / 1e6:.0f} MB | {r['dense_first_ms'] / 1e3:.1f} s"
                 if "dense_bytes" in r else "— | —")
        print(f"| {r['n']:,} | {r['k']} | {r['bytes'] / 1e6:.1f} MB | {r['bytes'] / r['n']:,.0f} "
              f"| {r['build_s']:.0f} s | {r['first_ms'] / 1e3:.2f} s | {r['head_ms']:.0f} ms | "
              f"{r['zoom_ms']:.0f} ms | {r['pan_ms']:.0f} ms | "
              f"{r['mean_ms']:.0f} / {r['max_ms']:.0f} ms | {r['mean_zoomed_layer_ms']:.0f} ms | "
              f"{r['mean_layer_ms']:.0f} / {r['max_layer_ms']:.0f} ms | {dense} |")
    if len(rows) > 1:
        for key in ("bytes", "build_s", "first_ms"):
            a = longpage.growth({r["n"]: r[key] for r in rows})
            print(f"growth of {key}: n^{a:.2f}")


if __name__ == "__main__":
    main()
