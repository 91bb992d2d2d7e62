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

COMMAND_MODULES = [
    "attnmap.cli.core",  # render, capture, info
    "attnmap.cli.compare",  # predict, diff
    "attnmap.cli.html",  # html
    "attnmap.cli.analysis",  # heads, relate
    "attnmap.cli.serve",  # serve
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

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
