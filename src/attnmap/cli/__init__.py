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

from .._errors import AttnmapError, AttnmapWarning
from ._print import printable

COMMAND_MODULES = [
    "attnmap.cli.core",  # render, capture, info
    "attnmap.cli.compare",  # predict, diff
    "attnmap.cli.html",  # html
    "attnmap.cli.analysis",  # heads, relate
    "attnmap.cli.serve",  # serve
    "attnmap.cli.generate",  # generate
    "attnmap.cli.census",  # census
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


def _check_argv(argv: Sequence[str]) -> None:
    """Arguments that are not UTF-8 (the shell passed raw bytes) stop here, with one line."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise AttnmapError(
                f"argument {shown!r} is not UTF-8 text (bad byte at position {exc.start}); "
                "pass UTF-8, or put the text in a file and use --file"
            ) from None


def _show_warning(message: Any, category: Any, *_a: Any, **_k: Any) -> None:
    print(f"attnmap: warning: {printable(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 fine, 2 bad input, 130 interrupted)."""
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ATTNMAP_DEBUG") == "1"
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the command returns
        warnings.simplefilter("always", AttnmapWarning)
        try:
            _check_argv(argv)
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.version:
                from .. import __version__

                print(__version__)
                return 0
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            return int(args.func(args) or 0)
        except AttnmapError as exc:
            if debug:
                raise
            print(f"attnmap: error: {printable(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("attnmap: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # the reader went away (`attnmap heads --json | head`): stop quietly, as cat does
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 0


if __name__ == "__main__":
    sys.exit(main())
