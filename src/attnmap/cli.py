"""The ``attnmap`` command: parse, call the library, print.

Each command lives in a module with ``register(subparsers)``; it sets ``func`` on its parser.
Modules listed in ``COMMAND_MODULES`` must import only the standard library at top level, so
that ``attnmap --help`` and every command start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._errors import AttnmapError, AttnmapWarning

COMMAND_MODULES = [
    "attnmap._cmd_core",  # render, capture, info
    "attnmap._cmd_compare",  # predict, diff
    "attnmap.viewer._cmd",  # html
    "attnmap.analysis._cmd",  # heads, relate
    "attnmap.app._cmd",  # serve
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit code 2), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"attnmap: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attnmap",
        description="See where a transformer's attention goes. Layers and heads are 0-based; "
        "negative numbers count from the end.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("attnmap"):
                continue  # a command not built yet
            raise
        mod.register(sub)
    return parser


def say(args: argparse.Namespace, msg: str) -> None:
    """A progress line on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"attnmap: {msg}", file=sys.stderr, flush=True)


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
    p.add_argument("--chat", action="store_true",
                   help='the text (or --file) is a JSON list of chat messages '
                   '[{"role": "user", "content": "..."}], read through the tokenizer\'s chat '
                   "template")
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
    from ._chat import parse_messages

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
    implicit_stdin = (text is None and not getattr(args, "run", None)
                      and getattr(args, "_text_required", True) and sys.stdin is not None
                      and not sys.stdin.isatty())
    if text == "-" or implicit_stdin:
        try:
            if sys.stdin is None:  # started with standard input closed
                raise AttnmapError("no text given; pass TEXT or --file PATH")
            return sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AttnmapError(
                f"standard input is not UTF-8 text (bad byte at position {exc.start})"
            ) from None
    if text is None and getattr(args, "_text_required", True) and not getattr(args, "run", None):
        raise AttnmapError("no text given; pass TEXT, --file PATH, or pipe text to stdin")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False) or os.environ.get("ATTNMAP_DEBUG") == "1"
    import warnings

    def _show(message: Any, category: Any, *_a: Any, **_k: Any) -> None:
        print(f"attnmap: warning: {message}", file=sys.stderr)

    warnings.showwarning = _show  # type: ignore[assignment]
    warnings.simplefilter("always", AttnmapWarning)
    try:
        return int(args.func(args) or 0)
    except AttnmapError as exc:
        if debug:
            raise
        print(f"attnmap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
