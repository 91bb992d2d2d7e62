"""The core commands as a user runs them: the real command line (in process), real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attnmap
from _cli import run_cli
from attnmap import capturing

TEXT = "The cat that sat on the mat was black."


def cli(*args, stdin=b"", cwd=None):
    # Standard input is an empty pipe by default, as under CI: never a terminal.
    return run_cli(*args, stdin=stdin, cwd=cwd, env={"HF_HUB_OFFLINE": "1"})


def assert_user_error(res, *needles):
    err = res.stderr
    assert res.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnmap: error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_render_bundled_default(tmp_path, monkeypatch):
    monkeypatch.setattr(capturing, "_CACHE", {})  # a fresh load, as in a new process
    out = tmp_path / "cat.png"
    res = cli("render", TEXT, "-o", out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "loading all-MiniLM-L6-v2" in res.stderr  # progress on stderr
    assert res.stdout == ""


def test_capture_then_render_from_run(tmp_path, gpt2_dir):
    run_file = tmp_path / "run.safetensors"
    res = cli("capture", TEXT, "--model", gpt2_dir, "-o", run_file)
    assert res.returncode == 0, res.stderr
    run = attnmap.load(run_file)
    direct = attnmap.capture(TEXT, model=gpt2_dir)
    np.testing.assert_array_equal(run.attention, direct.attention)
    for extra in (["--head", "all"], ["--overview"], ["--aggregate", "max"], ["--layer", "-1"]):
        out = tmp_path / f"o{len(extra)}{extra[-1]}.svg"
        res = cli("render", "--run", run_file, *extra, "-o", out)
        assert res.returncode == 0, res.stderr
        assert out.read_bytes().lstrip().startswith(b"<?xml")


def test_text_from_file_and_stdin(tmp_path, gpt2_dir):
    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli("capture", "--file", f, "--model", gpt2_dir, "-o", a, "-q").returncode == 0
    res = cli("capture", "--model", gpt2_dir, "-o", b, "-q", stdin=TEXT.encode())
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # --quiet
    assert attnmap.load(a).text == attnmap.load(b).text == TEXT


def test_encoder_decoder_cross_render(tmp_path, t5_dir):
    out = tmp_path / "cross.png"
    res = cli("render", TEXT, "--model", t5_dir, "--target", "The mat.", "--stack", "cross",
              "-o", out)
    assert res.returncode == 0, res.stderr
    assert out.exists()


def test_info(gpt2_dir):
    res = cli("info", "--model", gpt2_dir, "--json")
    facts = json.loads(res.stdout)
    assert facts["layers"] == 2 and facts["heads"] == 2
    assert facts["causal"] is True and facts["max_length"] == 64
    res = cli("info")
    assert "all-MiniLM-L6-v2" in res.stdout and "512" in res.stdout


def test_bad_inputs(tmp_path, gpt2_dir):
    out = tmp_path / "x.png"
    assert_user_error(cli("render", "", "-o", out), "empty")
    assert_user_error(cli("render", "   \n ", "-o", out), "empty")
    assert_user_error(cli("render", "the cat " * 100, "--model", gpt2_dir, "-o", out),
                      "maximum of 64", "--truncate")
    assert_user_error(cli("render", TEXT, "--model", gpt2_dir, "--layer", "7", "-o", out),
                      "0..1")
    assert_user_error(cli("render", TEXT, "--model", gpt2_dir, "--head", "2", "-o", out), "0..1")
    assert_user_error(cli("render", TEXT, "--model", gpt2_dir, "--head", "x", "-o", out), "'x'")
    assert_user_error(cli("render", TEXT, "--model", "no-such-model-xyz", "-o", out),
                      "no-such-model-xyz", "local directory")
    assert_user_error(cli("render", TEXT, "--model", tmp_path / "missing", "-o", out),
                      "does not exist")
    (tmp_path / "empty_model").mkdir()
    (tmp_path / "empty_model" / "config.json").write_text("{}")
    assert_user_error(cli("render", TEXT, "--model", tmp_path / "empty_model", "-o", out),
                      "no weights")
    assert_user_error(cli("render", "--file", tmp_path / "nope.txt", "-o", out), "does not exist")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert_user_error(cli("render", "--file", bad, "-o", out), "not UTF-8")
    assert_user_error(cli("render", TEXT, "-o", tmp_path / "no" / "dir" / "x.png"),
                      "does not exist")
    assert_user_error(cli("render", TEXT, "-o", tmp_path / "x.txt"), ".png")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    assert_user_error(cli("render", "--run", junk, "-o", out), "attnmap run")
    assert_user_error(cli("render", "--layer", "x", "-o", out), "--layer")
    assert not out.exists()


def test_debug_shows_traceback(tmp_path):
    res = cli("render", "", "-o", tmp_path / "x.png", "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_existing_output_kept_on_error(tmp_path, gpt2_dir):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    res = cli("render", TEXT, "--model", gpt2_dir, "--layer", "9", "-o", out)
    assert res.returncode == 2
    assert out.read_bytes() == b"precious"
    res = cli("render", TEXT, "--model", gpt2_dir, "-o", out)
    assert res.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


@pytest.mark.parametrize("args", [["--help"], ["render", "--help"]])
def test_help_mentions_zero_based(args):
    res = cli(*args)
    assert res.returncode == 0
    if args[0] == "render":
        assert "0-based" in res.stdout
