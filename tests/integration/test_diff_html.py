"""`attnmap diff … -o diff.html` as a user runs it (in process): one standalone page, two
aligned payloads."""

from __future__ import annotations

import json
import re

import numpy as np

import attnmap
from _cli import run_cli
from attnmap.diff import compare

from .test_html_cli import payload_of

A = "The keys to the cabinet are on the table."
B = "The key to the cabinets is on the table."


def cli(*args):
    return run_cli(*args)


def payload(html: str, ident: str) -> dict:
    return payload_of(html, ident)


def test_diff_html_page(tmp_path, gpt2_dir):
    out = tmp_path / "diff.html"
    r = cli("diff", A, B, "--model", gpt2_dir, "-o", out, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    d = compare(attnmap.capture(A, model=gpt2_dir), attnmap.capture(B, model=gpt2_dir))
    assert ranking == d.ranking
    html = out.read_text("utf-8")
    opts = json.loads(re.search(r'id="attnmap-options">(.*?)</script>', html).group(1))
    top = d.ranking[0]
    assert (opts["view"], opts["layer"], opts["head"]) == ("diff", top["layer"], top["head"])
    assert opts["diff"]["ranking"] == d.ranking and opts["diff"]["aligned"] == len(d.ia)
    # keys/key is a substitution (the tiny tokenizer splits "cabinets is" differently, so
    # "are" has no counterpart): the page says which aligned positions are substituted
    assert opts["diff"]["changed"] == d.changed.tolist()
    assert [lab for lab, c in zip(d.labels, d.changed) if c] == ["␣keys→␣key"]
    pa, pb = payload(html, "attnmap-payload"), payload(html, "attnmap-payload-b")
    toks, toks_b = [t.text for t in d.tokens], [t.text for t in d.tokens_b]
    assert pa["header"]["stacks"][0]["query_tokens"] == toks
    assert pb["header"]["stacks"][0]["query_tokens"] == toks_b
    # aligned: the same tokens both sides, except where substituted
    assert [x != y for x, y in zip(toks, toks_b)] == d.changed.tolist()
    for li in range(2):
        for hd in range(2):
            a, b, _, masked = d.matrices(li, hd)
            ga = pa["layers"][("self", li)]["values"][hd]
            gb = pb["layers"][("self", li)]["values"][hd]
            assert np.all(np.abs(ga - np.where(masked, 0, a)) <= a.max(1, keepdims=True) / 255)
            assert np.all(np.abs(gb - np.where(masked, 0, b)) <= b.max(1, keepdims=True) / 255)


def test_diff_html_against_a_model_and_bad_outputs(tmp_path, gpt2_dir):
    out = tmp_path / "models.html"
    r = cli("diff", A, "--model", gpt2_dir, "--against", gpt2_dir, "-o", out, "--head", "1",
            "--layer", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    opts = json.loads(re.search(r'id="attnmap-options">(.*?)</script>', out.read_text()).group(1))
    assert (opts["layer"], opts["head"]) == (0, 1)
    assert all(x["mean_abs"] == 0 and x["js"] == 0 for x in opts["diff"]["ranking"])
    bad = cli("diff", A, B, "--model", gpt2_dir, "-o", tmp_path / "x.txt")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"attnmap: error: output '{tmp_path / 'x.txt'}' must end in .html, .png, .svg or .pdf "
        "(not '.txt')")
    r = cli("diff", A, B, "--model", gpt2_dir, "-o", tmp_path / "h.html", "--head", "7")
    assert r.returncode == 2 and "head must be in 0..1" in r.stderr
    assert not (tmp_path / "h.html").exists()
