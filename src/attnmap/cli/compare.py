"""``attnmap predict | diff``: what the model predicted, and what changed between two runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import (
    add_common,
    add_model_options,
    add_stack_option,
    add_text_input,
    add_top_k_option,
    say,
)
from ._print import json_text, one_line


def register(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="per position: the model's top-k next tokens, and the true next token's "
        "probability, rank and surprisal",
        description="What the model predicted at each position. Causal LMs: the top-k next "
        "tokens and the actual next token's probability, rank and surprisal (bits); masked "
        "LMs: the top-k fill-ins at each mask token; encoder-decoders: the decoder's top-k at "
        "each step.",
    )
    add_text_input(p)
    add_model_options(p)
    add_top_k_option(p, "")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per "
                   "position")
    add_common(p)
    p.set_defaults(func=_predict)

    d = sub.add_parser(
        "diff",
        help="compare attention for two texts (one model) or one text (two models)",
        description="Rank heads by how much their attention changed between two texts through "
        "one model, or one text through two models (--against). Layers and heads are 0-based.",
    )
    d.add_argument("text", help="text A")
    d.add_argument("text_b", nargs="?", help="text B (omit with --against to compare models)")
    add_model_options(d)
    d.add_argument("--against", metavar="MODEL", help="model B: run text A through both")
    d.add_argument("-o", "--output", help="picture of A, B and A−B for one head (.png/.svg/.pdf), "
                   "or an interactive page of every head (.html)")
    d.add_argument("--layer", "-l", type=int, help="head to draw (default: the most changed)")
    d.add_argument("--head", type=int, help="head to draw (default: the most changed)")
    add_stack_option(d, "self-attention to compare")
    d.add_argument("--words", action="store_true", help="compare in the word view (aligns "
                   "texts whose tokens differ)")
    d.add_argument("--top", type=int, default=10, help="rows of the table (default 10)")
    d.add_argument("--json", action="store_true", help="print the ranking as JSON")
    add_common(d)
    d.set_defaults(func=_diff)


def _predict(args: argparse.Namespace) -> int:
    from .._errors import AttnmapError
    from ..capturing import capture
    from ._common import capture_kwargs, model_input, read_text

    if args.top_k < 1:
        raise AttnmapError(f"--top-k must be at least 1 (not {args.top_k})")
    text = read_text(args)
    assert text is not None
    run = capture(model_input(args, text), args.model, predictions=True, top_k=args.top_k,
                  **capture_kwargs(args))
    preds = run.predictions or []
    if args.json:
        print(json_text(preds))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(one_line(f"{run.model.get('id')} · "
                                      f"{run.extra.get('predictions_kind')} predictions")),
                  caption="✗: the token that came next was not the top-1; surprisal = "
                  "−log₂ p(next)", header_style="bold")
    for col in ("pos", "token", f"top-{args.top_k} (p)", "actual next (p, rank)",
                "surprisal", ""):
        table.add_column(col, justify="right" if col in ("pos", "surprisal") else "left")
    for row in prediction_rows(preds):
        table.add_row(*[Text(c) for c in row])  # Text: token strings are never markup
    Console().print(table)
    return 0


def prediction_rows(preds: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of `predict`'s table: position, token, top-k with p, the real next token's p
    and rank, its surprisal in bits, ✗ where it was not the top-1."""
    rows = []
    for r in preds:
        nxt = r["next"]
        miss = nxt is not None and nxt["rank"] != 1
        rows.append([
            str(r["position"]),
            one_line(r["token"]),
            "  ".join(one_line(f"{t['token']} {t['p']:.2f}") for t in r["top"]),
            "" if nxt is None else one_line(f"{nxt['token']} ({nxt['p']:.2f}, rank "
                                            f"{nxt['rank']})"),
            "" if nxt is None else f"{nxt['surprisal']:.1f} bits",
            "✗" if miss else "",
        ])
    return rows


def _diff(args: argparse.Namespace) -> int:
    from .. import diff as diffmod
    from .._errors import AttnmapError
    from .._io import check_writable
    from ..capturing import capture, check_text

    html_out = bool(args.output) and str(args.output).lower().endswith((".html", ".htm"))
    if args.output:
        if not html_out:
            from pathlib import Path

            from ..plot import FORMATS

            ext = Path(args.output).suffix.lower()
            if ext not in FORMATS:
                raise AttnmapError(f"output {args.output!r} must end in .html, .png, .svg or "
                                   f".pdf (not {ext or 'no extension'!r})")
        check_writable(args.output)
    if args.text_b is None and args.against is None:
        raise AttnmapError("give a second text, or --against MODEL to compare two models")
    if args.text_b is not None and args.against is not None:
        raise AttnmapError("compare two texts or two models, not both at once")
    from ._common import capture_kwargs, model_input

    check_text(args.text)
    kw = capture_kwargs(args)
    run_a = capture(model_input(args, args.text), args.model, **kw)
    if args.text_b is not None:
        run_b = capture(model_input(args, args.text_b), args.model, **kw)
    else:
        run_b = capture(model_input(args, args.text), args.against, **kw)
    d = diffmod.compare(run_a, run_b, stack=args.stack, words=args.words)
    if args.layer is not None:
        run_a.layer_index(args.layer, d.stack)
    if args.head is not None:
        run_a.head_index(args.head, d.stack)
    if args.json:
        print(json.dumps(d.ranking))
    else:
        _diff_table(d, args.top)
    if html_out:
        from ..viewer.html import diff_html

        html = diff_html(d, args.output, layer=args.layer, head=args.head)
        say(args, f"wrote {args.output} ({len(html.encode('utf-8')) / 1e6:.1f} MB)")
    elif args.output:
        from ..plot import diff_figure, save_figure

        fig = diff_figure(d, args.layer, args.head)
        save_figure(fig, args.output)
        say(args, f"wrote {args.output}")
    return 0


def _diff_table(d: Any, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"most changed heads ({len(d.ia)} aligned tokens)")
    for col in ("layer", "head", "mean |A−B|", "JS (bits)"):
        table.add_column(col, justify="right")
    for r in d.ranking[: max(top, 1)]:
        table.add_row(str(r["layer"]), str(r["head"]), f"{r['mean_abs']:.4f}", f"{r['js']:.4f}")
    Console().print(table)
