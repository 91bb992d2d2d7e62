"""Defects a new user or an attacker hit, each pinned by a test that failed before its fix.

The CLI runs in process through ``main(argv)``; pytest's ``capsys`` holds what it printed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.text import Text

import attnmap
from attnmap import AttentionRun, AttentionStack, Token
from attnmap.cli import main
from attnmap.plot import heatmap, save_figure

ESC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
RLO = "\u202e"


def _run(words, *, model=None, causal=True, layers=2, heads=2) -> AttentionRun:
    n = len(words)
    rng = np.random.default_rng(0)
    masked = np.triu(np.ones((n, n), bool), 1) if causal else np.zeros((n, n), bool)
    out = []
    for _ in range(layers):
        a = np.where(masked, -np.inf, rng.normal(size=(heads, n, n))).astype(np.float32)
        a = np.exp(a - a.max(-1, keepdims=True))
        out.append(a / a.sum(-1, keepdims=True))
    toks = [Token(text=w, raw=w, id=i) for i, w in enumerate(words)]
    return AttentionRun(text=" ".join(words), tokens=toks,
                        model=model or {"id": "hand", "causal": causal},
                        stacks={"self": AttentionStack("self", out, masked)})


# --- 2: token text is never matplotlib math -------------------------------------------------
@pytest.mark.parametrize("words", [["we", "set", r"$\notacmd$", "here"],
                                   ["costs", "$5-$10", "today"]])
def test_every_string_in_a_figure_is_literal(tmp_path, words):
    run = _run(words, model={"id": "$x$ model", "causal": True})
    fig = heatmap(run, 0, 0)
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    assert texts and all(t.get_parse_math() is False for t in texts)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert words[1] in labels or words[2] in labels  # exactly as typed, dollars and all
    save_figure(fig, tmp_path / "m.png")  # `$\notacmd$` used to raise while drawing
    save_figure(fig, tmp_path / "m.svg")
    assert "$5-$10" in (tmp_path / "m.svg").read_text() or words[0] != "costs"


def test_render_with_dollars_through_the_cli(tmp_path, gpt2_dir, capsys):
    out = tmp_path / "m.png"
    assert main(["render", r"we set $\notacmd$ here", "--model", str(gpt2_dir), "--words",
                 "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0


# --- 3: rollout and gradient figures say what they show ------------------------------------
def test_rollout_figure_is_labelled_as_rollout_and_defaults_to_the_last_layer():
    run = attnmap.transform(_run(["a", "b", "c", "d"], layers=3), method="rollout")
    fig = heatmap(run)  # no layer: the last, where rollout means most
    ax = fig.axes[0]
    assert "rollout" in ax.get_title() and "after layer 2" in ax.get_title()
    assert "head" not in ax.get_title()
    assert fig.axes[1].get_ylabel().startswith("rollout")  # the colour bar
    raw = heatmap(_run(["a", "b", "c", "d"], layers=3))
    assert "layer 0 · head 0" in raw.axes[0].get_title()
    assert raw.axes[1].get_ylabel() == "attention"


def test_grad_figure_names_the_output_it_explains(tmp_path, gpt2_dir):
    run = attnmap.capture("The cat sat on the mat.", model=gpt2_dir)
    g = attnmap.transform(run, method="grad")
    title = heatmap(g).axes[0].get_title()
    assert "explaining the" in title and "logit" in title
    assert heatmap(g).axes[1].get_ylabel().startswith("relevance")


# --- 5: predict, info and the probe say what they promise ----------------------------------
def test_predict_table_has_top_k_and_surprisal(gpt2_dir, capsys):
    assert main(["predict", "The cat sat on the mat.", "--model", str(gpt2_dir), "-k", "3",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "top-3 (p)" in out and "surprisal" in out and "bits" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("│ 1") or "│   1 │" in ln)
    assert row.count("0.") >= 3  # three predictions with their probabilities


def test_info_run_prints_plain_lines(tmp_path, capsys):
    path = _run(["a", "b", "c"]).save(tmp_path / "r.safetensors")
    assert main(["info", "--run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "None" not in out and "[" not in out
    assert "self: 2 × 2 × 3 × 3" in out


def test_repeat_probe_names_its_start_token_and_warns_on_an_encoder(bert_dir, capsys):
    assert main(["heads", "--probe", "repeat", "--length", "5", "--model", str(bert_dir),
                 "--json"]) == 0
    err = capsys.readouterr().err
    assert "BOS" not in err and "<s> + 5 random tokens" in err  # its own start token
    assert "induction is a causal idea" in err


def test_repeat_probe_on_a_causal_model_gives_no_encoder_note(gpt2_dir, capsys):
    assert main(["heads", "--probe", "repeat", "--length", "5", "--model", str(gpt2_dir),
                 "--json"]) == 0
    assert "causal idea" not in capsys.readouterr().err


# --- 14: one line, exit 2 -------------------------------------------------------------------
def test_non_utf8_argument_is_one_line(capsys):
    assert main(["render", "caf\udce9"]) == 2  # how Python hands over the byte 0xE9
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e99"])
def test_serve_refuses_impossible_memory(value, capsys):
    assert main(["serve", "--max-mb", value, "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnmap: error: --max-mb") and err.count("\n") == 1


# --- 15: nothing from a file reaches the terminal as a control sequence ---------------------
def _hostile_file(tmp_path):
    run = _run([f"a{ESC_TITLE}", f"b{RLO}c", "d\x00", "e"],
               model={"id": f"evil{CLEAR}{ESC_TITLE}", "causal": True,
                      "note": f"fake\nline{RLO}"})
    return run.save(tmp_path / "evil.safetensors")


@pytest.mark.parametrize("argv", [["info", "--run"], ["info", "--json", "--run"],
                                  ["heads", "--run"], ["heads", "--json", "--run"]])
def test_run_file_metadata_cannot_drive_the_terminal(tmp_path, capsys, argv):
    path = _hostile_file(tmp_path)
    assert main([*argv, str(path)]) == 0
    got = capsys.readouterr()
    for stream in (got.out, got.err):
        assert "\x1b" not in stream and "\x07" not in stream and RLO not in stream
        assert "\x00" not in stream
    if "--json" in argv and argv[0] == "info":
        assert json.loads(got.out)["id"] == f"evil{CLEAR}{ESC_TITLE}"  # exact as data
    elif argv[0] == "info":
        assert "⟨U+001B⟩" in got.out


def test_tokens_loaded_from_a_file_are_shown_like_captured_ones(tmp_path):
    back = attnmap.load(_hostile_file(tmp_path))
    assert [t.text for t in back.tokens][:3] == [
        "a⟨U+001B⟩]0;pwned⟨U+0007⟩", "b⟨U+202E⟩c", "d⟨U+0000⟩"]


def test_piped_text_works_for_commands_that_also_take_a_run(tmp_path, gpt2_dir):
    from _cli import run_cli

    out = tmp_path / "p.png"
    res = run_cli("render", "--model", gpt2_dir, "-o", out, "-q", stdin=b"The cat sat.")
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0
    empty = run_cli("render", "--model", gpt2_dir, "-o", out, "-q", stdin=b"")
    assert empty.returncode == 2 and "no text given" in empty.stderr
