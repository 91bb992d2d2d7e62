"""Run the ``attnmap`` command in this process, as a user's shell would run it.

``run_cli("render", text, "-o", out)`` calls ``attnmap.cli.main`` with the standard streams
swapped for in-memory ones and returns what a subprocess would have given: the exit code and
the text written to stdout and stderr. It spares each test a new interpreter (and a new
import of torch and transformers), so CLI tests take milliseconds instead of seconds.

What a real process does that is copied here:
- standard input is a pipe (never a terminal): ``isatty()`` is false and ``sys.stdin.buffer``
  holds the bytes given (``stdin=None`` is a closed standard input, ``sys.stdin is None``);
- stdout and stderr are UTF-8 text streams with a ``.buffer``, not terminals;
- ``SystemExit`` becomes its exit code; an uncaught exception prints its traceback on stderr
  and gives exit code 1, as the interpreter does;
- Python's default warning filters apply (pytest's own filters are set aside for the call);
- ``cwd`` and ``env`` changes last for the call only.

What it cannot copy: settings read once at import (``HF_HUB_OFFLINE`` in huggingface_hub,
say), output written to the file descriptors directly, signals, and models cached by an
earlier call in the same process (``attnmap.capturing._CACHE``). Tests of those keep a real
subprocess (``tests/integration/test_cli_process.py``).
"""

from __future__ import annotations

import io
import os
import sys
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Python's default filters for a release build (see the `warnings` documentation)
_DEFAULT_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]


@dataclass(frozen=True)
class Result:
    """What the command gave back: exit code, and stdout and stderr decoded as UTF-8."""

    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


def run_cli(*args: object, stdin: bytes | str | None = b"", cwd: str | Path | None = None,
            env: Mapping[str, str | None] | None = None) -> Result:
    """``attnmap ARGS…`` in process. ``env`` values of None remove that variable."""
    from attnmap.cli import main

    argv = [str(a) for a in args]
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8")
    out_raw, err_raw = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_raw, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_raw, encoding="utf-8", errors="backslashreplace",
                           write_through=True)
    inp = None if stdin is None else io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")

    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_cwd = os.getcwd()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    try:
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = inp, out, err  # type: ignore[assignment]
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_DEFAULT_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            try:
                code: object = main(argv)
            except SystemExit as exc:
                code = exc.code
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - what the interpreter does with it
                traceback.print_exc(file=err)
                code = 1
        if code is None:
            code = 0
        elif not isinstance(code, int):  # sys.exit("message"): printed, exit code 1
            print(code, file=err)
            code = 1
    finally:
        for s in (out, err):
            try:
                s.flush()
            except ValueError:  # closed by the command
                pass
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out_bytes = out_raw.getvalue()
    return Result(returncode=code, stdout=out_bytes.decode("utf-8"),
                  stderr=err_raw.getvalue().decode("utf-8"), stdout_bytes=out_bytes)
