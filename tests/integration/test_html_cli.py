"""`attnmap html` as a user runs it (in process) with a tiny real model; the page's payload
decoded back."""

from __future__ import annotations

import re

import numpy as np
import pytest

from _cli import run_cli
from attnmap.viewer import decode
from attnmap.viewer.html import B85


def attnmap_cli(*args, stdin=b""):
    return run_cli(*args, stdin=stdin)


def payload_of(html: str, ident: str = "attnmap-payload") -> dict:
    """Decode the base-85 payload that a standalone page embeds in element `ident`."""
    m = re.search(rf'id="{ident}" data-length="(\d+)">\s*([^<]*?)\s*</script>', html)
    assert m, f"no {ident} element"
    return decode(b85(m.group(2), int(m.group(1))))


def b85(text: str, length: int) -> bytes:
    """A page element's base-85 text → its first `length` bytes (decoded in the test, one
    group of five digits at a time, not by attnmap)."""
    out = bytearray()
    for g in range(0, len(text), 5):
        v = 0
        for ch in text[g : g + 5]:
            v = v * 85 + B85.index(ch)
        out += v.to_bytes(4, "big")
    return bytes(out[:length])


def test_html_from_text(tmp_path, gpt2_dir, gpt2_run):
    out = tmp_path / "report.html"
    r = attnmap_cli("html", gpt2_run.text, "--model", gpt2_dir, "-o", out, "--layer", "-1",
                    "--head", "mean", "--scale", "log")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert "writing" in r.stderr and "wrote" in r.stderr  # progress goes to stderr
    html = out.read_text("utf-8")
    assert re.search(r'<script type="application/json" id="attnmap-options">'
                     r'\{"layer": 1, "head": "mean", "scale": "log"\}</script>', html)
    d = payload_of(html)
    (stack,) = d["header"]["stacks"]
    assert stack["key_tokens"] == [t.text for t in gpt2_run.tokens]
    assert sorted(d["layers"]) == [("self", 0), ("self", 1)]
    ref = gpt2_run.layer(1)  # [head, query, key]
    got = d["layers"][("self", 1)]
    assert np.all(np.abs(got["values"] - ref) <= ref.max(axis=2, keepdims=True) / 255 + 1e-7)
    np.testing.assert_array_equal(got["masked"][0], gpt2_run.masked)


def test_html_from_run_file_and_stdin(tmp_path, gpt2_dir, gpt2_run):
    run_file = tmp_path / "run.safetensors"
    gpt2_run.save(run_file)
    out = tmp_path / "from_run.html"
    r = attnmap_cli("html", "--run", run_file, "-o", out, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert payload_of(out.read_text("utf-8"))["header"]["text"] == gpt2_run.text
    out2 = tmp_path / "stdin.html"
    r = attnmap_cli("html", "--model", gpt2_dir, "-o", out2, "-q", stdin="The cat sat.")
    assert r.returncode == 0, r.stderr
    assert payload_of(out2.read_text("utf-8"))["header"]["text"] == "The cat sat."


@pytest.mark.parametrize("args, message", [
    (["--layer", "7"], "layer must be in 0..1"),
    (["--head", "2"], "head must be in 0..1"),
    (["--stack", "cross"], "no 'cross' attention"),
])
def test_bad_view_fails_cleanly_and_keeps_the_old_file(tmp_path, gpt2_dir, args, message):
    out = tmp_path / "keep.html"
    out.write_text("old report", encoding="utf-8")
    r = attnmap_cli("html", "The cat sat.", "--model", gpt2_dir, "-o", out, *args)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("attnmap: error: ") and message in last
    assert "Traceback" not in r.stderr
    assert out.read_text("utf-8") == "old report"
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_usage_errors(tmp_path, gpt2_run):
    run_file = tmp_path / "run.safetensors"
    gpt2_run.save(run_file)
    cases = [
        (["html", "--run", tmp_path / "missing.safetensors", "-o", tmp_path / "a.html"],
         "does not exist"),
        (["html", "text", "--run", run_file, "-o", tmp_path / "a.html"], "not both"),
        (["html", "--run", run_file, "--model", "gpt2", "-o", tmp_path / "a.html"],
         "do not apply to --run"),
        (["html", "--run", run_file, "-o", tmp_path / "nodir" / "a.html"], "does not exist"),
        (["html", "--run", run_file, "--head", "most", "-o", tmp_path / "a.html"],
         "'mean' or 'max'"),
        (["html", "--run", run_file], "-o/--output"),
    ]
    for args, message in cases:
        r = attnmap_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        lines = r.stderr.strip().splitlines()  # progress lines may come first
        assert [ln for ln in lines if ": error: " in ln] == lines[-1:], r.stderr
