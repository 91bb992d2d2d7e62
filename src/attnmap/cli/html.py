"""``attnmap html``: write one self-contained interactive page. Standard library only here."""

from __future__ import annotations

import argparse
import time

from .._options import VIEWS
from ._common import (
    add_common,
    add_ignore_first_option,
    add_model_options,
    add_scale_option,
    add_stack_option,
    add_text_input,
    add_top_k_option,
    head_value,
    say,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "html",
        help="write an interactive, self-contained HTML page (opens offline)",
        description="Run the model once and write one .html file with every layer and head: "
        "pick layers and heads, hover for values, zoom, download PNG. It needs no network.",
    )
    add_text_input(p)
    p.add_argument("--run", metavar="PATH",
                   help="show a run saved by `attnmap capture` instead of running a model")
    add_model_options(p)
    p.add_argument("-o", "--output", metavar="PATH", required=True,
                   help="the .html file to write (replaced only once complete)")
    add_stack_option(p, "attention is shown first")
    p.add_argument("--layer", type=int, metavar="N", help="layer shown first (default 0)")
    p.add_argument("--head", type=head_value, metavar="N",
                   help="head shown first: a number, mean or max (default 0)")
    add_scale_option(p, None)
    p.add_argument("--view", choices=VIEWS,
                   help="one head (default), every head of the layer, layers × heads, or "
                   "generated: the rows of generated tokens only (runs from generate)")
    p.add_argument("--step", type=int, metavar="T",
                   help="generated runs: open at step T (T generated tokens shown)")
    p.add_argument("--cmap", default="Blues", metavar="NAME",
                   help="matplotlib colormap (default Blues): the page colours a value as the "
                   "PNG from `attnmap render --cmap NAME` does")
    p.add_argument("--representation", choices=("auto", "dense", "long"), default="auto",
                   help="dense: every weight (short runs); long: a pyramid of block max/sum "
                   "plus each row's largest weights, so thousands of tokens fit one file; auto "
                   "(default): long for big runs")
    p.add_argument("--precision", choices=("full", "compact"), default="full",
                   help="dense pages: full (default; each value within 1/256 of its row's "
                   "max) or compact (within 1/510, as 8-bit weights: weights below that show "
                   "as 0; pages of long runs are many times smaller)")
    add_ignore_first_option(p, "the colour scale")
    p.add_argument("--predictions", action="store_true",
                   help="also record the model's predictions and show them beside the rows "
                   "(top-1 and its probability; click a row for the top-k)")
    add_top_k_option(p, " with --predictions")
    p.add_argument("--census", metavar="OUTDIR",
                   help="instead of a text: the report of a corpus census (attnmap census -o)")
    p.add_argument("--embed", type=int, default=3, metavar="N",
                   help="--census: embed the attention pages of N top documents (default 3; "
                   "needs the census's model and corpus)")
    add_common(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from .._io import check_writable
    from ._common import obtain_run

    if args.census:
        from .census import write_report

        return write_report(args)
    t0 = time.perf_counter()
    from ..viewer.colours import check_cmap

    out = check_writable(args.output)  # fail before the slow part
    check_cmap(args.cmap)
    run = obtain_run(args)
    options = {
        "stack": args.stack, "layer": args.layer, "head": args.head, "scale": args.scale,
        "view": args.view, "ignore_first": args.ignore_first or None, "step": args.step,
    }  # None: the page's own default
    from ..viewer import longpage
    from ..viewer.html import (
        b85encode,
        check_options,
        representation_of,
        write_html,
        write_long_html,
    )

    shape = " + ".join(f"{st.name} {st.n_layers}×{st.n_heads}" for st in run.stacks.values())
    say(args, f"writing {out} ({len(run.tokens)} tokens; {shape} layers × heads)")
    if representation_of(run, args.representation) == "long":
        opts = check_options(run, {k: v for k, v in options.items() if v is not None})
        if args.precision != "full":
            say(args, f"--precision {args.precision} applies to dense pages; the long "
                "representation keeps its own encoding")
        data = longpage.build(run, cmap=args.cmap, encode=b85encode)  # text made on threads
        size = write_long_html(data, out, opts)
        say(args, f"{data.describe()}, {size / 1e6:.0f} MB")
    else:
        size = write_html(run, out, cmap=args.cmap, precision=args.precision,
                          **{k: v for k, v in options.items() if v is not None})
        say(args, f"dense run ({len(run.tokens):,} tokens): every weight "
            f"({args.precision} precision), {size / 1e6:.1f} MB")
    say(args, f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    print(out)
    return 0
