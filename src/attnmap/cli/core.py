"""``attnmap render | capture | info``: the core commands."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    DeprecatedOption,
    add_common,
    add_ignore_first_option,
    add_model_options,
    add_scale_option,
    add_stack_option,
    add_text_input,
    apply_view,
    head_value,
    obtain_run,
    say,
)
from ._print import facts_lines, json_text


def register(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="draw attention heatmaps to PNG/SVG/PDF",
        description="Draw the attention heatmap of a layer and head: query tokens down, key "
        "tokens across, darker = more attention. Layers and heads are 0-based; negative "
        "numbers count from the end (-1 = last).",
    )
    add_text_input(p, required=False)
    p.add_argument("--run", metavar="FILE", help="draw from a saved run (.safetensors) instead "
                   "of running a model")
    add_model_options(p)
    p.add_argument("-o", "--output", default="attention.png",
                   help="output file; .png, .svg or .pdf (default: attention.png)")
    p.add_argument("--layer", "-l", type=int, default=None,
                   help="layer, 0-based (default 0; the last layer for --method rollout/grad)")
    p.add_argument("--head", "--heads", dest="head",
                   type=lambda v: head_value(v, allow_all=True), default=0,
                   help="head, 0-based; mean or max over the layer's heads; or all for a grid "
                   "of the layer's heads (default 0)")
    p.add_argument("--overview", action="store_true", help="layers × heads small multiples")
    p.add_argument("--aggregate", dest="head", choices=["mean", "max"],
                   action=DeprecatedOption, new="--head mean or --head max",
                   help=argparse.SUPPRESS)
    add_stack_option(p, "attention to draw")
    vals = p.add_mutually_exclusive_group()
    vals.add_argument("--values", dest="values", action="store_true", default=None,
                      help="always print the score in each cell")
    vals.add_argument("--no-values", dest="values", action="store_false",
                      help="never print scores in cells")
    add_scale_option(p, "unit")
    add_ignore_first_option(p, "the colour scale (with --scale data or log)")
    p.add_argument("--cmap", default="Blues", help="a sequential matplotlib colormap")
    p.add_argument("--dpi", type=int, default=150, help="resolution of PNG output")
    p.add_argument("--words", action="store_true",
                   help="merge subword tokens into words (rows still sum to 1)")
    p.add_argument("--method", default="raw",
                   help="raw attention (default), rollout, value-norm or grad")
    p.add_argument("--predictions", action="store_true",
                   help="capture the model's predictions and show each row's top-1 beside the "
                   "matrix (✗ where the true next token was not top-1)")
    p.add_argument("--generated-only", action="store_true",
                   help="a run from `attnmap generate`: rows are the generated tokens only")
    p.add_argument("--steps", action="store_true",
                   help="a run from `attnmap generate`: one strip per step (the new token's "
                   "row over every token, its probability, rank and entropy beside it)")
    p.add_argument("--query", type=int, metavar="N",
                   help="an image run: the token whose attention is laid over the image "
                   "(default: CLS; for a vision-language model the last token)")
    p.add_argument("--matrix", action="store_true",
                   help="an image run: draw the plain patch × patch heatmap instead of the "
                   "overlay on the image")
    add_common(p)
    p.set_defaults(func=_render)

    c = sub.add_parser("capture", help="run a model once and save every layer's attention",
                       description="Run the model on the text and save all attention weights "
                       "as one .safetensors run file (see the README for the format).")
    add_text_input(c)
    add_model_options(c)
    c.add_argument("-o", "--output", required=True, help="run file to write (.safetensors)")
    c.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage precision (float16 halves the file)")
    c.add_argument("--predictions", action="store_true",
                   help="also store the model's top-k predictions at each position")
    c.add_argument("--store", choices=["auto", "weights", "qk"], default="auto",
                   help="weights: every attention weight; qk: queries and keys, weights "
                   "computed when read (long inputs); auto (default): qk once the weights "
                   "would pass 1 GiB")
    add_common(c)
    c.set_defaults(func=_capture)

    i = sub.add_parser("info", help="model facts: architecture, layers, heads, maximum length")
    i.add_argument("--model", "-m", metavar="MODEL", help="hub id, local directory, or omitted "
                   "for the bundled all-MiniLM-L6-v2")
    i.add_argument("--trust-remote-code", action="store_true")
    i.add_argument("--run", metavar="FILE", help="describe a saved run file instead")
    i.add_argument("--json", action="store_true", help="print JSON")
    add_common(i)
    i.set_defaults(func=_info)


def _render(args: argparse.Namespace) -> int:
    from .._io import check_writable
    from ..plot import output_format

    output_format(args.output)
    check_writable(args.output)
    run = apply_view(obtain_run(args), args)
    from .. import plot

    if (args.query is not None or args.matrix) and run.extra.get("image") is None:
        from .._errors import AttnmapError

        raise AttnmapError("--query and --matrix are for runs of an image; a text run draws "
                           "its heatmap (leave them out)")

    layer = plot.default_layer(run) if args.layer is None else args.layer
    run.layer_index(layer, args.stack)  # range errors before any drawing
    look = {"stack": args.stack, "scale": args.scale, "cmap": args.cmap,
            "ignore_first": args.ignore_first}
    if args.generated_only and (args.overview or args.head == "all"):
        from .._errors import AttnmapError

        raise AttnmapError("--generated-only draws one head's generated rows; leave out "
                           "--overview and --head all")
    if args.steps:
        if args.overview or args.head == "all":
            from .._errors import AttnmapError

            raise AttnmapError("--steps draws one head (or --head mean/max) per step; leave "
                               "out --overview and --head all")
        fig = plot.steps(run, -1 if args.layer is None else args.layer, args.head,
                         stack=args.stack, cmap=args.cmap)
    elif args.overview:
        fig = plot.overview(run, **look)
    elif run.extra.get("image") is not None and not args.matrix:
        from .. import plot_image

        if args.head == "all":
            fig = plot_image.overlay_grid(run, layer, query=args.query, stack=args.stack,
                                          cmap=args.cmap)
        else:
            fig = plot_image.overlay(run, layer, args.head, query=args.query,
                                     stack=args.stack, cmap=args.cmap)
    elif args.head == "all":
        fig = plot.grid(run, layer, **look)
    else:
        if args.head not in ("mean", "max"):
            run.head_index(args.head, args.stack)
        fig = plot.heatmap(run, layer, args.head, values=args.values,
                           predictions=True if args.predictions else None,
                           generated_only=args.generated_only, **look)
    plot.save_figure(fig, args.output, dpi=args.dpi)
    say(args, f"wrote {args.output}")
    return 0


def _capture(args: argparse.Namespace) -> int:
    from .._io import check_writable

    check_writable(args.output)
    run = obtain_run(args)
    run.save(args.output, dtype=args.dtype)
    say(args, f"wrote {args.output}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.run:
        from ..run import load

        run = load(args.run)
        facts = dict(run.model)
        facts["tokens"] = len(run.tokens)
        facts["stacks"] = {k: list(v.shape) for k, v in run.stacks.items()}  # L × H × q × k
    else:
        from ..models import describe

        facts = describe(args.model, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json_text(facts, indent=2))
    else:
        print("\n".join(facts_lines(facts)))
    return 0
