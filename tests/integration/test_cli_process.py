"""What only a real ``attnmap`` process can show: start-up, the console script, exit codes and
stderr as the shell sees them, a reader that goes away, bytes in argv.

Every other CLI test runs the command in process (``tests/_cli.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import attnmap

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def attnmap_process(*args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "attnmap", *args], capture_output=True,
                          env=ENV, timeout=300, **kw)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    err = res.stderr.decode("utf-8")
    assert res.returncode == 2, err
    assert "Traceback" not in err and "Exception" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnmap: error: "), err
    return lines[0]


def test_version_from_python_m():
    res = attnmap_process("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == attnmap.__version__


def test_console_script():
    exe = shutil.which("attnmap")
    if exe is None:
        pytest.skip("the attnmap console script is not installed (pip install -e .)")
    res = subprocess.run([exe, "--version"], capture_output=True, env=ENV, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == attnmap.__version__


def test_bad_input_is_exit_2_and_one_stderr_line(tmp_path):
    res = attnmap_process("render", "", "-o", str(tmp_path / "x.png"))
    assert "empty" in one_error_line(res)
    assert res.stdout == b""
    assert list(tmp_path.iterdir()) == []


def test_help_starts_without_torch():
    code = ("import sys\nfrom attnmap.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'matplotlib') "
            "if m in sys.modules)\nprint('IMPORTED', heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert "usage: attnmap" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "IMPORTED []", res.stdout[-500:]


def test_reader_going_away_is_not_an_error(tmp_path, gpt2_run):
    """``attnmap heads --run F --json | head -c 10``: the reader closes the pipe early."""
    run_file = gpt2_run.save(tmp_path / "run.safetensors")
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "attnmap", "heads", "--run", str(run_file),
                             "--json"], stdout=write, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=ENV)
    os.close(write)
    # Close the reading end before the command writes anything: its first write must fail
    # with a broken pipe (Python ignores SIGPIPE, so the write raises), whatever the timing.
    os.close(read)
    _, err = proc.communicate(timeout=300)
    err = err.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err, err
    assert err == "", err

    # and the same command with a reader that stays gives the whole JSON
    res = attnmap_process("heads", "--run", str(run_file), "--json")
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 4


def test_argument_that_is_not_utf8():
    """``attnmap render $'caf\\xe9'``: the shell passes a raw Latin-1 byte."""
    res = subprocess.run([sys.executable.encode(), b"-m", b"attnmap", b"render", b"caf\xe9"],
                         capture_output=True, env=ENV, timeout=300, stdin=subprocess.DEVNULL)
    line = one_error_line(res)
    assert "UTF-8" in line and "caf" in line, line
