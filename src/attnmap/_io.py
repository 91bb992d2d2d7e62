"""Writing files so that an existing file is only replaced once the new one is complete."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._errors import AttnmapError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any slow work, if `path` cannot be written."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise AttnmapError(f"output path {str(p)!r} is a directory; give a file name")
    if not parent.is_dir():
        raise AttnmapError(f"cannot write {str(p)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise AttnmapError(f"cannot write {str(p)!r}: folder {str(parent)!r} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise AttnmapError(f"cannot write {str(p)!r}: the file is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it over `path` only if the block succeeds.

    The temporary file is removed whatever ends the block: an exception, Ctrl+C, or SIGTERM
    and SIGHUP (see `_removed_on_signals`).
    """
    target = check_writable(path)
    made: list[Path] = []
    with _removed_on_signals(made) as held:
        try:
            with held():  # a signal now waits until the file's name is known
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                           dir=target.parent or ".")
                made.append(Path(tmp))
                os.close(fd)
            tmp_path = made[0]
            yield tmp_path
            # mkstemp makes the file private (0600); give it the mode a plain open() would,
            # or keep the mode of the file it replaces.
            if target.exists():
                mode = target.stat().st_mode & 0o7777
            else:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(tmp_path, mode)
            os.replace(tmp_path, target)
        except BaseException:
            for p in made:
                with contextlib.suppress(OSError):
                    p.unlink()
            raise


# Ctrl+C raises KeyboardInterrupt, which the block above already cleans up after; these end
# the process without unwinding, so they need a handler of their own.
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _removed_on_signals(paths: list[Path]) -> Iterator[Any]:
    """While the block runs, SIGTERM and SIGHUP first remove `paths`, then do what they
    did before: end the process as the signal does by default, or call the handler the
    program had set (its exception unwinds through `atomic_path`, which removes the file).

    It yields `held`, a context manager: a signal that comes inside ``with held():`` is acted
    on when that block ends (there the file is made and its name learnt).
    Only the main thread can set handlers; elsewhere, and for a signal set to be ignored (or
    handled outside Python), nothing changes.
    """
    holding: dict[str, Any] = {"on": False, "pending": None}

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        holding["on"] = True
        try:
            yield
        finally:
            holding["on"] = False
            if holding["pending"] is not None:
                on_signal(holding["pending"], None)

    if not _main_thread():
        yield held
        return
    previous: dict[int, Any] = {}

    def restore() -> None:
        while previous:
            signum, handler = previous.popitem()
            signal.signal(signum, handler)

    def on_signal(signum: int, frame: Any) -> None:
        if holding["on"]:
            holding["pending"] = signum
            return
        before = previous.get(signum, signal.SIG_DFL)
        restore()
        if callable(before):
            before(signum, frame)  # the program's own handler decides
            return
        for p in paths:
            with contextlib.suppress(OSError):
                p.unlink()
        signal.raise_signal(signum)  # SIG_DFL again: end the way the signal would have

    for signum in _SIGNALS:
        before = signal.getsignal(signum)
        if before is signal.SIG_IGN or before is None:
            continue
        previous[signum] = before
        signal.signal(signum, on_signal)
    try:
        yield held
    finally:
        restore()
