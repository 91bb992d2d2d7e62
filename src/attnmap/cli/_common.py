"""What every command shares: text input, model options, the run a command works on."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._errors import AttnmapError
from ..patches import looks_like_image


def say(args: argparse.Namespace, msg: str) -> None:
    """A progress line on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"attnmap: {msg}", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(args: argparse.Namespace, label: str
                 ) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar with the time left on a terminal's stderr (gone when done), as a
    ``progress(done, total)`` callback; None when quiet or when stderr is not a terminal."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("attnmap: {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every command has."""
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")


def add_text_input(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """TEXT as an argument, --file PATH, or standard input (TEXT of '-')."""
    p.add_argument("text", nargs="?", help="the input text ('-' reads standard input)")
    p.add_argument("--file", "-f", metavar="PATH", help="read the text from a UTF-8 file")
    p.set_defaults(_text_required=required)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "-m", metavar="MODEL",
        help="hub id (gpt2, bert-base-uncased, t5-small), local directory, or omitted for "
        "the bundled all-MiniLM-L6-v2 (works offline)",
    )
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (only for models you trust)")
    p.add_argument("--target", metavar="TEXT",
                   help="encoder-decoder models: the decoder's text (default: its own greedy "
                   "continuation)")
    p.add_argument("--truncate", action="store_true",
                   help="cut text longer than the model's maximum instead of failing")
    p.add_argument("--chat", nargs="?", const=True, default=False, metavar="PROMPT",
                   help='the text (or --file) is a JSON list of chat messages '
                   '[{"role": "user", "content": "..."}], read through the tokenizer\'s chat '
                   'template; with an image and a vision-language model, --chat "PROMPT" is '
                   "the question asked about the image")
    p.add_argument("--no-special-tokens", dest="special_tokens", action="store_false",
                   help="plain text: leave out the tokenizer's BOS/EOS/[CLS]/[SEP]")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--torch-dtype", default="auto", metavar="DTYPE",
                   help="auto (default: float32 on the CPU, the checkpoint's dtype on a GPU), "
                   "float32, bfloat16 or float16")
    p.add_argument("--device-map", metavar="MAP",
                   help="'auto' spreads a model too big for one GPU over several (needs "
                   "accelerate)")


def capture_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The model options every capturing command passes on to :func:`attnmap.capture`."""
    return {
        "target": getattr(args, "target", None),
        "truncate": bool(getattr(args, "truncate", False)),
        "trust_remote_code": bool(getattr(args, "trust_remote_code", False)),
        "progress": not getattr(args, "quiet", False),
        "special_tokens": bool(getattr(args, "special_tokens", True)),
        "device": getattr(args, "device", "auto"),
        "torch_dtype": getattr(args, "torch_dtype", "auto"),
        "device_map": getattr(args, "device_map", None),
    }


def model_input(args: argparse.Namespace, text: str) -> Any:
    """The text itself, or with --chat the messages its JSON holds."""
    if not getattr(args, "chat", False):
        return text
    from .._chat import parse_messages

    where = f"--file {args.file!r}" if getattr(args, "file", None) else "the --chat text"
    return parse_messages(text, where)


def read_text(args: argparse.Namespace) -> str | None:
    """The text from TEXT, --file or stdin; None when none was given and none is required."""
    text, path = getattr(args, "text", None), getattr(args, "file", None)
    if text is not None and path is not None:
        raise AttnmapError("give the text either as an argument or with --file, not both")
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise AttnmapError(f"--file {path!r} does not exist") from None
        except IsADirectoryError:
            raise AttnmapError(f"--file {path!r} is a directory, not a text file") from None
        except OSError as exc:
            raise AttnmapError(f"cannot read --file {path!r}: {exc.strerror}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttnmapError(
                f"--file {path!r} is not UTF-8 text (bad byte at position {exc.start}); "
                "convert it with `iconv -t UTF-8`"
            ) from None
    # piped text counts as the text (`echo hi | attnmap render -o x.png`) unless --run is given
    implicit_stdin = (text is None and not getattr(args, "run", None)
                      and sys.stdin is not None and not sys.stdin.isatty())
    if text == "-" or implicit_stdin:
        try:
            if sys.stdin is None:  # started with standard input closed
                raise AttnmapError("no text given; pass TEXT or --file PATH")
            piped = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttnmapError(
                f"standard input is not UTF-8 text (bad byte at position {exc.start})"
            ) from None
        if text == "-" or piped:
            return piped
        # nothing was piped: the same as no text at all
    if text is None and getattr(args, "_text_required", True) and not getattr(args, "run", None):
        raise AttnmapError("no text given; pass TEXT, --file PATH, or pipe text to stdin")
    return text


def obtain_run(args: argparse.Namespace) -> Any:
    """The run a command works on: loaded from --run, or captured from the text."""
    from .._errors import AttnmapError

    prompt = _split_chat(args)
    if not getattr(args, "run", None) and getattr(args, "file", None) is None and (
            looks_like_image(getattr(args, "text", None))):
        return _image_run(args, prompt)
    text = read_text(args)
    predictions = bool(getattr(args, "predictions", False))
    if getattr(args, "run", None):
        if text is not None:
            raise AttnmapError("give either a text or --run FILE, not both")
        if getattr(args, "model", None) is not None or getattr(args, "target", None):
            raise AttnmapError("--model and --target do not apply to --run; the run file "
                               "already holds the model's attention")
        if getattr(args, "chat", False):
            raise AttnmapError("--chat does not apply to --run; the run file already holds "
                               "its tokens")
        from ..run import load

        run = load(args.run)  # quick: no progress line, so an error stays the only line
        if predictions and run.predictions is None:
            raise AttnmapError("this run file has no predictions; capture it with "
                               "`attnmap capture --predictions`")
        return run
    if text is None:
        raise AttnmapError("no text given; pass TEXT, --file PATH, --run FILE, or pipe text in")
    top_k = int(getattr(args, "top_k", 5))
    if predictions and top_k < 1:
        raise AttnmapError(f"--top must be at least 1 (not {top_k})")
    from ..capturing import capture

    t0 = time.perf_counter()
    run = capture(model_input(args, text), args.model, store=getattr(args, "store", "auto"),
                  predictions=predictions, top_k=top_k, **capture_kwargs(args))
    say(args, f"captured {len(run.tokens)} tokens, {run.n_layers} layers × {run.n_heads} "
        f"heads in {time.perf_counter() - t0:.1f}s")
    return run


def _split_chat(args: argparse.Namespace) -> str | None:
    """``--chat VALUE``: with an image, VALUE is the prompt (returned); otherwise VALUE is the
    chat messages' JSON, the text itself (``--chat '[…]'``)."""
    chat = getattr(args, "chat", False)
    if not isinstance(chat, str):
        return None
    text = getattr(args, "text", None)
    if looks_like_image(text):
        args.chat = False
        return chat
    if text is not None or getattr(args, "file", None) is not None:
        raise AttnmapError("--chat takes a value only as the messages' JSON (or, with an "
                           "image, the prompt); give the text once")
    args.text, args.chat = chat, True
    return None


def _image_run(args: argparse.Namespace, prompt: str | None) -> Any:
    """Capture an image: a vision model reads it alone, a vision-language model with the
    ``--chat`` prompt."""
    for name, flag in (("target", "--target"), ("predictions", "--predictions")):
        if getattr(args, name, None):
            raise AttnmapError(f"{flag} is for text models; leave it out for an image")
    if getattr(args, "store", "auto") == "qk":
        raise AttnmapError("--store qk is for long texts; an image's weights are stored whole "
                           "(leave --store out)")
    from ..vision import capture_image

    t0 = time.perf_counter()
    run = capture_image(args.text, args.model, prompt=prompt,
                        device=getattr(args, "device", "auto"),
                        torch_dtype=getattr(args, "torch_dtype", "auto"),
                        progress=not getattr(args, "quiet", False))
    say(args, f"captured {len(run.tokens)} tokens ({run.extra['image']['grid'][0]}×"
        f"{run.extra['image']['grid'][1]} patches), {run.n_layers} layers × {run.n_heads} "
        f"heads in {time.perf_counter() - t0:.1f}s")
    return run


def apply_view(run: Any, args: argparse.Namespace) -> Any:
    """--words / --method: hand the run to the analysis transforms when asked."""
    if not getattr(args, "words", False) and getattr(args, "method", "raw") in ("raw", None):
        return run
    if getattr(args, "words", False) and run.extra.get("image") is not None:
        raise AttnmapError("--words merges subword tokens into words; this run's tokens are "
                           "image patches (leave --words out)")
    from ..attribution import transform

    return transform(run, words=args.words, method=args.method)




# --- one vocabulary for the options commands share (see attnmap._options) -------------------
class DeprecatedOption(argparse.Action):
    """An old spelling that still works for one release: it warns and stores the value."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .._errors import deprecated

        deprecated(str(option_string), self.new, stacklevel=2)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_stack_option(p: argparse.ArgumentParser, what: str = "attention") -> None:
    from .._options import STACKS

    p.add_argument("--stack", choices=STACKS,
                   help=f"which {what}: self (decoder-only and encoder models), or for "
                   "encoder-decoders encoder (default), decoder or cross")


def scale_value(value: str) -> str:
    """``--scale``: unit, data or log (the old 'head' means data, with a warning)."""
    from .._options import SCALES, check_scale

    if value not in (*SCALES, "head"):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {', '.join(SCALES)})")
    return check_scale(value)


def add_scale_option(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--scale", type=scale_value, default=default, metavar="{unit,data,log}",
                   help="colour scale: unit (0–1), data (0 to the largest value shown) or log "
                   f"(default {default or 'data'})")


def add_ignore_first_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ignore-first", action="store_true",
                   help=f"leave the first token out of {what} (attention sinks: BOS/[CLS])")


def add_top_k_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--top-k", "-k", dest="top_k", type=int, default=5, metavar="K",
                   help=f"predictions per position{what} (default 5)")
    p.add_argument("--top", dest="top_k", type=int, action=DeprecatedOption, new="--top-k",
                   help=argparse.SUPPRESS)


def head_value(value: str, *, allow_all: bool = False) -> int | str:
    """``--head``: a number, mean or max (and all where a grid can be drawn)."""
    words = ("mean", "max", "all") if allow_all else ("mean", "max")
    if value in words:
        return value
    try:
        return int(value)
    except ValueError:
        named = ", ".join(repr(w) for w in words[:-1]) + f" or {words[-1]!r}"
        raise argparse.ArgumentTypeError(
            f"must be a head number, {named} (not {value!r})") from None
