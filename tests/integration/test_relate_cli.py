"""``attnmap heads`` and ``attnmap relate`` as a user runs them: the real command line (in
process), real files."""

from __future__ import annotations

import json

import pytest

import attnmap
from _cli import run_cli
from attnmap.analysis import SCORE_NAMES, head_scores, relate
from attnmap.probes import repeat_probe


def cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd)  # standard input: empty, not a terminal


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("attnmap")]
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_file(gpt2_run, tmp_path_factory):
    return gpt2_run.save(tmp_path_factory.mktemp("runs") / "gpt2.safetensors")


def test_heads_json_is_exactly_the_library_result(run_file):
    proc = cli("heads", "--run", run_file, "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = head_scores(attnmap.load(run_file))
    assert got == want  # floats survive JSON exactly
    assert all(set(e) == {"layer", "head", "scores"} and tuple(e["scores"]) == SCORE_NAMES
               for e in got)
    assert [(e["layer"], e["head"]) for e in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_heads_sort_top_and_options(run_file):
    proc = cli("heads", "--run", run_file, "--json", "--sort", "previous_token", "--top", "3",
               "--ignore-first", "--ignore-current", "--locality-k", "1")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = head_scores(attnmap.load(run_file), ignore_first=True, ignore_current=True,
                       locality_k=1)
    want.sort(key=lambda e: -e["scores"]["previous_token"])
    assert got == want[:3]
    # the old spellings still work for one release, with a warning naming the new one
    old = cli("heads", "--run", run_file, "--json", "--sort", "previous_token", "--top", "3",
              "--exclude-first", "--exclude-current", "--locality-k", "1")
    assert old.returncode == 0 and json.loads(old.stdout) == got
    assert "--exclude-first is deprecated" in old.stderr and "use --ignore-first" in old.stderr


def test_heads_table(run_file):
    proc = cli("heads", "--run", run_file, "--sort", "entropy")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(ln for ln in lines if "layer" in ln)
    assert header.split() == ["layer", "head", "self", "prev", "next", "first", "dup", "induct",
                              "local", "dist", "H", "H/ln", "k", "special"]
    rows = [ln.split() for ln in lines if ln.split()[:1] and ln.split()[0].isdigit()]
    assert len(rows) == 4
    assert all(r[4] == "–" for r in rows)  # a causal stack has no next token
    entropies = [float(r[10]) for r in rows]
    assert entropies == sorted(entropies, reverse=True)


def test_heads_from_text_through_the_model(gpt2_dir):
    text = "The cat that sat on the mat was black.\nIt was."
    proc = cli("heads", text, "--model", gpt2_dir, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == head_scores(attnmap.capture(text, model=gpt2_dir))


def test_heads_probe_repeat(gpt2_dir):
    proc = cli("heads", "--probe", "repeat", "--length", 10, "--seed", 1, "--model", gpt2_dir,
               "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    run = repeat_probe(gpt2_dir, length=10, seed=1)
    assert len(run.tokens) == 21  # <s> + 10 + 10
    assert json.loads(proc.stdout) == head_scores(run)


def test_relate_json_is_exactly_the_library_result(run_file):
    proc = cli("relate", "--run", run_file, "--from", "was#2", "--to", "cat", "--vs", "mat",
               "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == relate(attnmap.load(run_file), "was#2", "cat", vs="mat")
    assert set(got) == {"stack", "from", "to", "vs", "ranked_by", "heads", "notes"}
    assert set(got["heads"][0]) == {"layer", "head", "to", "vs", "diff"}
    assert got["from"]["word"] == "was" and got["from"]["occurrence"] == 2
    run = attnmap.load(run_file)
    for row in got["heads"]:  # and the numbers are the run's own
        a = run.head(row["layer"], row["head"])
        q = got["from"]["tokens"]
        assert row["to"] == pytest.approx(a[q][:, got["to"]["tokens"]].sum(1).mean())


def test_relate_table_and_top(run_file):
    proc = cli("relate", "--run", run_file, "--from", "was", "--to", "cat", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert "was → cat" in proc.stdout and "occurs 2 times" in proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert len(rows) == 2


@pytest.mark.parametrize(("args", "needles"), [
    (["relate", "--from", "dog", "--to", "cat"], ["'dog' is not in the text", "mat"]),
    (["relate", "--from", "was", "--to", "cat#5"], ["no #5"]),
    (["heads", "--sort", "bogus"], ["--sort must be one of", "previous_token"]),
    (["heads", "--top", "0"], ["--top", "must be 1 or more"]),
    (["heads", "--probe", "repeat"], ["--probe makes its own input"]),
    (["heads", "--stack", "cross"], ["--stack", "no 'cross' attention", "it has: self"]),
])
def test_bad_input_is_one_line_exit_2(run_file, args, needles):
    one_line_error(cli(*args, "--run", run_file), *needles)


def test_no_input_at_all(tmp_path):
    one_line_error(cli("heads", cwd=tmp_path), "no text given")
