"""SIGTERM and SIGHUP in the middle of a write: the hidden ``.NAME.XXXX.part`` file goes, the
old file stays, and the process ends as the signal (or the program's own handler) says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attnmap._io import atomic_path

SRC = str(Path(__file__).resolve().parents[2] / "src")

SLOW_WRITE = """
import sys, time
from attnmap._io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"new, half written")
    print("writing", flush=True)
    time.sleep(60)
"""

OWN_HANDLER = """
import signal, sys
def bye(signum, frame):
    raise SystemExit(3)
signal.signal(signal.SIGTERM, bye)
""" + SLOW_WRITE

BIG_SAVE = """
import sys
import numpy as np
import attnmap
n = 1000
a = np.full((8, 8, n, n), 1.0 / n, np.float32)  # [layer, head, query, key]: 256 MB
run = attnmap.from_arrays(a, tokens=[f"t{i}" for i in range(n)], causal=False)
print("saving", flush=True)
run.save(sys.argv[1])
"""


# The child starts with SIGTERM and SIGHUP as a program run from a shell has them: a suite run
# under `nohup` would otherwise hand SIGHUP down ignored. (Set in the child's own code: a
# preexec_fn would fork a process that holds threads.)
DEFAULT_SIGNALS = """
import signal
for _s in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, signal.SIG_DFL)
"""


def _start(code: str, target: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", DEFAULT_SIGNALS + code, str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _parts(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGTERM", "SIGHUP"])
def test_signal_during_a_write_removes_the_part_file(tmp_path, signum):
    target = tmp_path / "page.html"
    target.write_text("old")
    proc = _start(SLOW_WRITE, target)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        assert len(_parts(tmp_path)) == 1  # the write is under way
        proc.send_signal(signum)
        proc.wait(20)
    finally:
        proc.kill()
    assert proc.returncode == -signum  # ended by the signal, as without attnmap
    assert _parts(tmp_path) == []
    assert target.read_text() == "old"


def test_the_programs_own_handler_still_decides(tmp_path):
    target = tmp_path / "page.html"
    target.write_text("old")
    proc = _start(OWN_HANDLER, target)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        proc.kill()
    assert proc.returncode == 3  # its SystemExit(3)
    assert _parts(tmp_path) == []
    assert target.read_text() == "old"


def test_sigterm_while_saving_a_large_run(tmp_path):
    target = tmp_path / "run.safetensors"
    target.write_bytes(b"old run")
    proc = _start(BIG_SAVE, target)
    try:
        assert proc.stdout.readline().strip() == "saving", proc.stderr.read()
        end = time.monotonic() + 60
        while not _parts(tmp_path):  # the temporary file exists: the save has begun
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, proc.stderr.read()
    assert _parts(tmp_path) == []
    assert target.read_bytes() == b"old run"


def test_handlers_are_put_back_and_threads_can_write(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        tmp.write_text("a")
    assert {s: signal.getsignal(s) for s in before} == before
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with atomic_path(tmp_path / "b.txt") as tmp:
                tmp.write_text("b")
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    t.join(10)
    assert errors == [] and (tmp_path / "b.txt").read_text() == "b"
    assert {s: signal.getsignal(s) for s in before} == before
