"""``attnmap heads`` and ``attnmap relate``: the head census and relation queries.

Only the standard library at top level, so that the command line starts fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ._common import (
    DeprecatedOption,
    add_common,
    add_ignore_first_option,
    add_model_options,
    add_stack_option,
    add_text_input,
    progress_bar,
    say,
)
from ._print import json_text, one_line

SCORES = ("self", "previous_token", "next_token", "first_token", "duplicate_token", "induction",
          "locality", "mean_distance", "entropy", "entropy_norm", "special")
# Short column titles so that the whole table fits an 80-column terminal.
_TITLES = {"self": "self", "previous_token": "prev", "next_token": "next", "first_token": "first",
           "duplicate_token": "dup", "induction": "induct", "locality": "local",
           "mean_distance": "dist", "entropy": "H", "entropy_norm": "H/ln k",
           "special": "special"}


def _at_least(low: int) -> Any:
    """An argparse type: a whole number no smaller than `low`."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number (not {value!r})") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more (not {n})")
        return n

    return parse


_positive = _at_least(1)
_natural = _at_least(0)


def _source(p: argparse.ArgumentParser) -> None:
    add_text_input(p, required=False)
    p.add_argument("--run", metavar="FILE", help="use a saved run (.safetensors) instead of "
                   "running a model")
    add_model_options(p)
    add_stack_option(p, "self-attention to read")


def register(sub: Any) -> None:
    h = sub.add_parser(
        "heads",
        help="score every head: previous token, induction, entropy …",
        description="A census of the heads: for each layer and head, how much attention goes "
        "to itself, the previous token, the first token, earlier copies (duplicate), the token "
        "after an earlier copy (induction), nearby tokens (locality), how far it reaches "
        "(mean distance), how spread it is (entropy) and special tokens. See docs/reading.md.",
    )
    _source(h)
    h.add_argument("--sort", metavar="SCORE",
                   help=f"sort heads by this score, highest first ({', '.join(SCORES)})")
    h.add_argument("--top", metavar="N", type=_positive, help="show only the first N heads")
    h.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    add_ignore_first_option(h, "the pattern scores")
    h.add_argument("--ignore-current", action="store_true",
                   help="pattern scores leave out attention to the query's own token")
    h.add_argument("--exclude-first", dest="ignore_first", nargs=0, const=True,
                   action=DeprecatedOption, new="--ignore-first", help=argparse.SUPPRESS)
    h.add_argument("--exclude-current", dest="ignore_current", nargs=0, const=True,
                   action=DeprecatedOption, new="--ignore-current", help=argparse.SUPPRESS)
    h.add_argument("--locality-k", metavar="K", type=_natural, default=2,
                   help="locality counts keys within ±K positions (default 2)")
    h.add_argument("--probe", choices=["repeat"],
                   help="instead of a text: the model's start token (BOS/[CLS], if any) + N "
                   "random tokens + the same N again (finds induction heads)")
    h.add_argument("--length", metavar="N", type=_positive, default=50,
                   help="--probe repeat: tokens in the random sequence (default 50)")
    h.add_argument("--seed", metavar="S", type=int, default=0,
                   help="--probe repeat: random seed (default 0)")
    add_common(h)
    h.set_defaults(func=_heads)

    r = sub.add_parser(
        "relate",
        help="which heads make one word attend to another",
        description="For every head, the attention from one word of the text to another (and "
        "to a third with --vs), heads ranked by the difference. A word spanning several tokens "
        "is summed over its key tokens and averaged over its query tokens; WORD#2 picks the "
        "second occurrence.",
    )
    _source(r)
    r.add_argument("--from", dest="from_", metavar="WORD", required=True,
                   help="the word that attends (the query)")
    r.add_argument("--to", metavar="WORD", required=True, help="the word attended to")
    r.add_argument("--vs", metavar="WORD", help="a word to compare against")
    r.add_argument("--top", metavar="N", type=_positive, default=None,
                   help="show only the best N heads (table default 10)")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(r)
    r.set_defaults(func=_relate)


def _get_run(args: argparse.Namespace) -> Any:
    from ._common import obtain_run

    return obtain_run(args)


def _heads(args: argparse.Namespace) -> int:
    from .._errors import AttnmapError

    if args.sort is not None and args.sort not in SCORES:
        raise AttnmapError(f"--sort must be one of {', '.join(SCORES)} (not {args.sort!r})")
    if args.probe:
        if args.text is not None or args.file is not None or args.run:
            raise AttnmapError("--probe makes its own input; give no TEXT, --file or --run")
        from ..probes import repeat_probe

        run = repeat_probe(args.model, length=args.length, seed=args.seed)
        # the model's own start token (BOS/[CLS]) leads the probe when it has one
        has_start = len(run.tokens) == 2 * args.length + 1
        start = f"{run.tokens[0].text} + " if has_start else ""
        say(args, f"probe: {one_line(start)}{args.length} random tokens, repeated "
            f"(seed {args.seed})")
        if not run.model.get("causal"):
            say(args, "note: induction is a causal idea (a token finds what followed its "
                "earlier copy); this encoder also sees the later copy, so read the induction "
                "score with care")
    else:
        run = _get_run(args)
    from ..analysis.scores import head_score_parts

    with progress_bar(args, f"census of {len(run.tokens):,} tokens") as progress:
        entries = head_score_parts(run, stack=args.stack, ignore_first=args.ignore_first,
                                   ignore_current=args.ignore_current,
                                   locality_k=args.locality_k, progress=progress).entries()
    if args.sort:
        # Undefined scores (no row had a target) sort last; ties keep layer/head order.
        entries.sort(key=lambda e: (e["scores"][args.sort] is None,
                                    -(e["scores"][args.sort] or 0.0)))
    vision = None
    if run.extra.get("image") is not None:  # a run of an image: the vision census too
        from ..analysis.vision import vision_scores

        by_head = {(v["layer"], v["head"]): v["scores"]
                   for v in vision_scores(run, stack=args.stack)}
        vision = by_head
        for e in entries:
            e["vision"] = by_head.get((e["layer"], e["head"]))
    if args.top:
        entries = entries[: args.top]
    if args.json:
        print(json_text(entries))
        return 0
    _heads_table(run, entries, args)
    if vision is not None:
        _vision_table(entries)
    return 0


def _vision_table(entries: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title="vision heads", caption="distance: mean attention distance in pixels "
                  "of the image; CLS focus 1 − H/log n over the patches; sink/register: share "
                  "of the patch queries' attention", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("layer", "head", "distance px", "CLS focus", "sink", "register"):
        table.add_column(name, justify="right")
    for e in entries:
        v = e.get("vision") or {}
        table.add_row(str(e["layer"]), str(e["head"]),
                      *(_fmt(v.get(n)) for n in ("distance_px", "cls_focus", "sink_mass",
                                                 "register_mass")))
    _console().print(table)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _heads_table(run: Any, entries: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    where = run.extra.get("probe")
    title = (f"{run.model.get('id')}: {len(run.tokens)} tokens"
             + (f", repeat probe N={where['length']} seed={where['seed']}" if where else ""))
    table = Table(title=Text(one_line(title)),
                  caption="– = no row of this input has a target for the score; "
                  "entropy H in nats", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("head", justify="right")
    for name in SCORES:
        style = "bold" if name == args.sort else None
        table.add_column(_TITLES[name], justify="right", header_style=style, style=style)
    for e in entries:
        table.add_row(str(e["layer"]), str(e["head"]), *(_fmt(e["scores"][n]) for n in SCORES))
    _console().print(table)


def _console() -> Any:
    from rich.console import Console

    # Piped output has no terminal width to respect; rich would squeeze the table to 80.
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 120)


def _relate(args: argparse.Namespace) -> int:
    run = _get_run(args)
    from ..analysis.relations import relate

    res = relate(run, args.from_, args.to, args.vs, stack=args.stack)
    if args.top:
        res["heads"] = res["heads"][: args.top]
    if args.json:
        print(json_text(res))
        return 0
    from rich import box
    from rich.table import Table
    from rich.text import Text

    console = _console()
    for note in res["notes"]:
        console.print(Text(one_line(f"note: {note}")), style="yellow")
    src, dst, alt = res["from"], res["to"], res["vs"]
    title = f"{src['word']} → {dst['word']}" + (f" vs {alt['word']}" if alt else "")
    table = Table(title=Text(one_line(title)), caption=f"heads ranked by {res['ranked_by']}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("head", justify="right")
    table.add_column(Text(one_line(f"→ {dst['word']}")), justify="right")
    if alt:
        table.add_column(Text(one_line(f"→ {alt['word']}")), justify="right")
        table.add_column("difference", justify="right")
    for row in res["heads"][: args.top or 10]:
        cells = [str(row["layer"]), str(row["head"]), f"{row['to']:.3f}"]
        if alt:
            cells += [f"{row['vs']:.3f}", f"{row['diff']:+.3f}"]
        table.add_row(*cells)
    console.print(table)
    return 0
