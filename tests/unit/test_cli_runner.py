"""The in-process CLI runner (tests/_cli.py) behaves as a process would, and leaves this one as
it found it. Only commands that stop before any model is loaded: no torch here."""

from __future__ import annotations

import os
import sys

import attnmap
from _cli import run_cli


def test_version_and_streams_restored():
    before = sys.stdin, sys.stdout, sys.stderr
    res = run_cli("--version")
    assert (res.returncode, res.stdout, res.stderr) == (0, attnmap.__version__ + "\n", "")
    assert res.stdout_bytes == res.stdout.encode()
    assert (sys.stdin, sys.stdout, sys.stderr) == before


def test_usage_error_is_system_exit_2_as_one_line(tmp_path):
    res = run_cli("render", "--no-such-option", "-o", tmp_path / "x.png")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "attnmap: error: unrecognized arguments: --no-such-option (see `attnmap --help`)"]


def test_stdin_bytes_are_read_and_bad_bytes_named(tmp_path):
    # text that is not UTF-8 on standard input stops before any model is loaded, whether the
    # command reads a pipe by itself (capture) or is told to with '-'
    for args in (["capture", "-o", tmp_path / "x.safetensors"],
                 ["render", "-", "-o", tmp_path / "x.png"]):
        res = run_cli(*args, stdin=b"caf\xe9")
        assert res.returncode == 2, args
        assert res.stderr == (
            "attnmap: error: standard input is not UTF-8 text (bad byte at position 3)\n")
    # and empty standard input is empty text, as from an empty pipe
    res = run_cli("render", "-", "-o", tmp_path / "x.png", stdin=b"  \n")
    assert res.returncode == 2 and "empty" in res.stderr


def test_closed_stdin(tmp_path):
    res = run_cli("render", "-", "-o", tmp_path / "x.png", stdin=None)
    assert res.returncode == 2
    assert res.stderr == "attnmap: error: no text given; pass TEXT or --file PATH\n"


def test_cwd_and_env_last_for_the_call_only(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNMAP_RUNNER_PROBE", "kept")
    cwd, debug = os.getcwd(), os.environ.get("ATTNMAP_DEBUG")
    res = run_cli("heads", cwd=tmp_path, env={"ATTNMAP_RUNNER_PROBE": None, "ATTNMAP_DEBUG": "0"})
    assert res.returncode == 2 and "no text given" in res.stderr  # nothing in tmp_path to read
    assert os.getcwd() == cwd
    assert os.environ["ATTNMAP_RUNNER_PROBE"] == "kept"
    assert os.environ.get("ATTNMAP_DEBUG") == debug


def test_debug_traceback_goes_to_stderr_with_exit_1(tmp_path):
    res = run_cli("render", "", "-o", tmp_path / "x.png", "--debug")
    assert res.returncode == 1
    assert res.stderr.startswith("Traceback (most recent call last):")
    assert res.stderr.rstrip().splitlines()[-1].startswith("attnmap._errors.AttnmapError:")
