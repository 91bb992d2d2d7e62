"""``attnmap census``: every head's scores over a whole corpus. Standard library only here."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._common import add_common, say


def _whole(low: int) -> Any:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number (not {value!r})") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more (not {n})")
        return n

    return parse


def _gpus(value: str) -> float:
    try:
        g = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs (not {value!r})") from None
    if not g >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (not {value})")
    return g


def register(sub: Any) -> None:
    p = sub.add_parser(
        "census",
        help="score every head over a whole corpus (one machine or a Ray cluster)",
        description="The head census over many documents: each score's numerator and row "
        "count per document and head, so corpus means weight every row alike. Writes "
        "OUTDIR/heads.parquet (one row per document × head), OUTDIR/docs.parquet and "
        "OUTDIR/summary.json (corpus means with 95%% intervals). A rerun with the same "
        "arguments resumes. The report: attnmap html --census OUTDIR -o census.html",
    )
    p.add_argument("inputs", nargs="+", metavar="CORPUS",
                   help=".txt (one document per line), .jsonl or .parquet files, or a saved "
                   "`datasets` folder")
    p.add_argument("-o", "--output", dest="outdir", metavar="OUTDIR", required=True,
                   help="folder for the results (made if missing; a rerun resumes from it)")
    p.add_argument("--model", "-m", metavar="MODEL",
                   help="hub id, local directory, or omitted for the bundled all-MiniLM-L6-v2")
    p.add_argument("--field", default="text", metavar="NAME",
                   help=".jsonl/.parquet/dataset: the field holding the text (default text)")
    p.add_argument("--split", choices=("line", "blank"), default="line",
                   help=".txt: one document per line (default), or blank-line separated")
    p.add_argument("--chat", action="store_true",
                   help="each record is a list of chat messages, read through the "
                   "tokenizer's chat template")
    p.add_argument("--max-docs", type=_whole(1), metavar="N", help="only the first N documents")
    p.add_argument("--max-tokens", type=_whole(2), metavar="N",
                   help="truncate each document to N tokens (recorded in docs.parquet)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default: this process, model loaded once) or ray (Ray Data "
                   "actors, each loading the model once; pip install 'attnmap[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join a running Ray cluster (ray://head:10001); default: start a "
                   "local Ray for this census")
    p.add_argument("--gpus-per-worker", type=_gpus, default=0, metavar="G",
                   help="ray: GPUs per model actor (default 0: CPU actors)")
    p.add_argument("--workers", type=_whole(1), metavar="N",
                   help="ray: model actors (default: the cluster's CPUs, or GPUs / G)")
    p.add_argument("--batch-size", type=_whole(1), default=16, metavar="N",
                   help="documents per batch and per shard (default 16)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip records that are not documents (counted in summary.json) "
                   "instead of stopping at the first")
    p.add_argument("--restart", action="store_true",
                   help="throw away the results in OUTDIR and start again")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (only for models you trust)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="local engine: auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--torch-dtype", default="auto", metavar="DTYPE",
                   help="auto (default), float32, bfloat16 or float16")
    add_common(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..corpus import census

    if args.engine != "ray" and (args.ray_address or args.gpus_per_worker or args.workers):
        from .._errors import AttnmapError

        raise AttnmapError("--ray-address, --gpus-per-worker and --workers need --engine ray")
    t0 = time.perf_counter()
    bar = _Bar(quiet=args.quiet)
    try:
        summary = census(
            args.inputs, model=args.model, outdir=args.outdir, field=args.field,
            split=args.split, chat=args.chat, max_docs=args.max_docs,
            max_tokens=args.max_tokens, engine=args.engine, ray_address=args.ray_address,
            gpus_per_worker=args.gpus_per_worker, workers=args.workers,
            batch_size=args.batch_size, skip_bad=args.skip_bad, restart=args.restart,
            trust_remote_code=args.trust_remote_code, device=args.device,
            torch_dtype=args.torch_dtype, progress=bar.update,
            say=lambda m: say(args, m))
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
    say(args, f"{summary['docs']} documents, {summary['tokens']} tokens{skipped} in "
        f"{dt:.1f} s; wrote {args.outdir}/heads.parquet and summary.json")
    print(args.outdir)
    return 0


class _Bar:
    """A progress bar with the time left, on stderr (a terminal only; else nothing)."""

    def __init__(self, *, quiet: bool) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.quiet = quiet or not sys.stderr.isatty()

    def update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("census"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("docs"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True))
            self.progress.start()
            self.task = self.progress.add_task("census", total=total, completed=done)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def write_report(args: argparse.Namespace) -> int:
    """``attnmap html --census OUTDIR -o report.html``."""
    import warnings

    from .._errors import AttnmapError, AttnmapWarning
    from .._io import check_writable

    if args.text is not None or args.file is not None or args.run:
        raise AttnmapError("--census makes the report of a census; give no TEXT, --file or --run")
    if args.embed < 0:
        raise AttnmapError(f"--embed must be 0 or more (not {args.embed})")
    out = check_writable(args.output)
    from ..viewer.census import census_page, pick_documents, report_data

    data = report_data(args.census)
    pages: dict[int, str] = {}
    wanted = pick_documents(data, args.embed) if args.embed else []
    if wanted:
        try:
            pages = _attention_pages(args.census, wanted, args)
        except AttnmapError as exc:
            warnings.warn(f"the report has no attention pages: {exc}", AttnmapWarning,
                          stacklevel=1)
    html = census_page(data, pages)
    from .._io import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    say(args, f"wrote {out} ({data['docs']} documents; {len(pages)} attention pages)")
    print(out)
    return 0


def _attention_pages(outdir: str, docs: list[int], args: argparse.Namespace) -> dict[int, str]:
    """The standalone attention page of each of `docs`, captured again with the census's
    model from its corpus (both named in OUTDIR/fingerprint.json)."""
    import json
    from pathlib import Path

    from .._corpus_io import read_corpus
    from .._errors import AttnmapError
    from ..capturing import get_model
    from ..corpus import doc_run
    from ..viewer.html import page

    try:
        fp = json.loads((Path(outdir) / "fingerprint.json").read_text("utf-8"))
    except (OSError, ValueError):
        raise AttnmapError(f"{outdir!r} has no readable fingerprint.json") from None
    opts = fp["options"]
    paths = [Path(c["path"]) for c in fp["corpus"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise AttnmapError(f"the corpus {missing[0]!r} is gone")
    records, _ = read_corpus(paths, field=opts["field"], split=opts["split"],
                             chat=opts["chat"], skip_bad=True)
    by_doc = {r.doc: r for r in records}
    model_arg = fp.get("model_arg")
    loaded = get_model(model_arg if args.model is None else args.model,
                       torch_dtype=opts.get("torch_dtype", "auto"))
    out = {}
    for d in docs:
        if d in by_doc:
            out[d] = page(doc_run(loaded, by_doc[d].value, max_tokens=opts["max_tokens"],
                                  store="weights"))
    return out
