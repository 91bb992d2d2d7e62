"""``attnmap generate``: let the model write, keep every step's attention. Standard library
only here."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._common import add_common, add_text_input, add_top_k_option, head_value, say

OUTPUTS = (".html", ".safetensors", ".png", ".svg", ".pdf")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="let a model write text and keep the attention of every step",
        description="Generate up to --max-new-tokens tokens after the text (greedy unless "
        "--sample) and print them. With -o the attention of the prompt and of every "
        "generated token, as the model computed it at each step, goes to a page (.html), a "
        "run file (.safetensors) or a figure of the generated rows (.png/.svg/.pdf).",
    )
    add_text_input(p)
    p.add_argument("--model", "-m", metavar="MODEL",
                   help="hub id or local directory of a causal or encoder-decoder LM")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (only for models you trust)")
    p.add_argument("--chat", action="store_true",
                   help='the text (or --file) is a JSON list of chat messages, read through the '
                   "tokenizer's chat template; the reply is the assistant's turn")
    p.add_argument("--max-new-tokens", "-n", type=int, default=20, metavar="N",
                   help="write at most N tokens (default 20)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, metavar="T", help="with --sample")
    p.add_argument("--top-p", type=float, metavar="P", help="with --sample: nucleus sampling")
    p.add_argument("--seed", type=int, metavar="S", help="make sampling repeatable")
    p.add_argument("--stop", action="append", metavar="S",
                   help="stop once the text written contains S (repeatable)")
    add_top_k_option(p, " kept at each step")
    p.add_argument("--store", choices=["auto", "weights", "qk"], default="auto",
                   help="weights, qk (queries and keys, for long generations) or auto "
                   "(default: qk once the weights would pass 1 GiB)")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="where the attention goes: .html, .safetensors, .png, .svg or .pdf")
    p.add_argument("--layer", "-l", type=int, default=-1,
                   help="figures and pages: layer (default -1, the last)")
    p.add_argument("--head", type=head_value, default="mean",
                   help="figures and pages: head number, mean or max (default mean)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--torch-dtype", default="auto", metavar="DTYPE",
                   help="auto (default), float32, bfloat16 or float16")
    p.add_argument("--device-map", metavar="MAP", help="'auto' spreads a big model over GPUs")
    add_common(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from .._errors import AttnmapError
    from .._io import check_writable
    from ._common import model_input, read_text

    if args.output is not None:
        ext = Path(args.output).suffix.lower()
        if ext not in OUTPUTS:
            raise AttnmapError(f"output {args.output!r} must end in {', '.join(OUTPUTS)} "
                               f"(not {ext or 'no extension'!r})")
        check_writable(args.output)
    if not args.sample and (args.temperature is not None or args.top_p is not None
                            or args.seed is not None):
        raise AttnmapError("--temperature, --top-p and --seed shape sampling, and generation "
                           "is greedy by default; add --sample or leave them out")
    text = read_text(args)
    assert text is not None  # the text is required
    from ..generating import generate

    t0 = time.perf_counter()
    run = generate(model_input(args, text), args.model, max_new_tokens=args.max_new_tokens,
                   do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                   seed=args.seed, stop=args.stop, top_k=args.top_k, store=args.store,
                   trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                   device=args.device, torch_dtype=args.torch_dtype,
                   device_map=args.device_map)
    gen = run.extra["generation"]
    say(args, f"generated {gen['generated_tokens']} tokens after a {gen['prompt_tokens']}-token "
        f"prompt in {time.perf_counter() - t0:.1f}s (stopped: {gen['stopped']})")
    from ._print import printable

    sys.stdout.write(printable(run.extra["generated_text"]) + "\n")
    sys.stdout.flush()
    if args.output is None:
        return 0
    ext = Path(args.output).suffix.lower()
    if ext == ".safetensors":
        run.save(args.output)
    elif ext == ".html":
        from ..viewer.html import to_html

        to_html(run, args.output, layer=args.layer, head=args.head)
    else:
        from .. import plot

        stack = "decoder" if run.target_tokens else None
        run.layer_index(args.layer, stack)
        if isinstance(args.head, int):
            run.head_index(args.head, stack)
        fig = plot.heatmap(run, args.layer, args.head, stack=stack, generated_only=True)
        plot.save_figure(fig, args.output)
    say(args, f"wrote {args.output}")
    return 0
