"""Predictions beside the map, and diffs of two texts or two models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import attnmap
from attnmap.diff import align, compare

from .test_cli_core import assert_user_error, cli

TEXT = "The keys to the cabinet are on the table."


def test_diff_with_itself_is_exactly_zero(gpt2_run):
    d = compare(gpt2_run, gpt2_run)
    assert len(d.ranking) == gpt2_run.n_layers * gpt2_run.n_heads
    assert all(r["mean_abs"] == 0.0 and r["js"] == 0.0 for r in d.ranking)
    # equal changes keep layer/head order: every head ranks equal
    assert [(r["layer"], r["head"]) for r in d.ranking] == [
        (li, h) for li in range(gpt2_run.n_layers) for h in range(gpt2_run.n_heads)]
    a, b, delta, _ = d.matrices(0, 0)
    assert not delta.any()


@pytest.fixture(scope="module")
def planted(tmp_path_factory, gpt2_dir):
    """Model B = model A with the query weights of layer 1, head 1 changed."""
    from transformers import GPT2LMHeadModel

    b_dir = tmp_path_factory.mktemp("planted") / "b"
    shutil.copytree(gpt2_dir, b_dir)
    model = GPT2LMHeadModel.from_pretrained(b_dir)
    d = model.config.n_embd
    hd = d // model.config.n_head
    with torch.no_grad():
        w = model.transformer.h[1].attn.c_attn.weight  # [embed, 3·embed]: q | k | v
        g = torch.Generator().manual_seed(1)
        w[:, hd:2 * hd] += torch.randn(d, hd, generator=g) * 2.0  # head 1's queries
    model.save_pretrained(b_dir)
    return gpt2_dir, b_dir


def test_planted_difference_ranked_first(planted):
    a_dir, b_dir = planted
    d = compare(attnmap.capture(TEXT, model=a_dir), attnmap.capture(TEXT, model=b_dir))
    assert (d.ranking[0]["layer"], d.ranking[0]["head"]) == (1, 1)
    assert d.ranking[0]["js"] > 0.01 and d.ranking[0]["mean_abs"] > 0.01
    # nothing upstream of the change moved
    for r in d.ranking[1:]:
        assert r["mean_abs"] < 1e-6


def test_diff_cli_json_and_picture(planted, tmp_path):
    a_dir, b_dir = planted
    out = tmp_path / "diff.png"
    res = cli("diff", TEXT, "--model", a_dir, "--against", b_dir, "--json", "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    ranking = json.loads(res.stdout)
    assert set(ranking[0]) == {"layer", "head", "mean_abs", "js"}
    assert (ranking[0]["layer"], ranking[0]["head"]) == (1, 1)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_diff_figure_for_papers(planted, tmp_path):
    import re

    from attnmap.plot import diff_figure, save_figure

    from ..unit.test_plot import _pdf_fonts

    a_dir, b_dir = planted
    d = compare(attnmap.capture(TEXT, model=a_dir), attnmap.capture(TEXT, model=b_dir))
    fig = diff_figure(d)
    assert _pdf_fonts(save_figure(fig, tmp_path / "d.pdf").read_bytes()) == (True, False)
    svg = save_figure(fig, tmp_path / "d.svg").read_text("utf-8")
    texts = re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)
    # each token labels the rows and columns of the three panels
    assert texts.count(d.tokens[2].text) >= 6
    assert "A − B" in texts


KEYS_A = "The keys to the cabinet are"
KEYS_B = "The key to the cabinets is"
KEYS_LABELS = ["[CLS]", "the", "keys→key", "to", "the", "cabinet→cabinets", "are→is", "[SEP]"]


@pytest.fixture(scope="module")
def keys_runs():
    """The two texts through the bundled MiniLM, whose vocabulary has every word whole."""
    return attnmap.capture(KEYS_A), attnmap.capture(KEYS_B)


def _ranking_over_every_position(a, b):
    """Each head's mean |A − B| and mean row JS over all n × n cells (an encoder masks
    nothing): what compare must give when every token, substituted or not, keeps its slot."""
    out = {}
    for li in range(a.n_layers):
        for h in range(a.n_heads):
            p, q = a.head(li, h).astype(np.float64), b.head(li, h).astype(np.float64)
            p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
            m = (p + q) / 2
            js = 0.5 * (p * np.log2(p / m)).sum(-1) + 0.5 * (q * np.log2(q / m)).sum(-1)
            out[li, h] = (float(np.abs(a.head(li, h) - b.head(li, h)).mean()), float(js.mean()))
    return out


def test_substituted_tokens_keep_their_slot(keys_runs):
    a, b = keys_runs
    assert len(a.tokens) == len(b.tokens) == 8
    d = compare(a, b)
    assert d.ia.tolist() == d.ib.tolist() == list(range(8))
    assert d.changed.tolist() == [False, False, True, False, False, True, True, False]
    assert d.labels == KEYS_LABELS
    assert [t.text for t in d.tokens_b] == [t.text for t in b.tokens]
    want = _ranking_over_every_position(a, b)
    assert len(d.ranking) == a.n_layers * a.n_heads
    for r in d.ranking:
        assert r["mean_abs"] == pytest.approx(want[r["layer"], r["head"]][0], abs=1e-6)
        assert r["js"] == pytest.approx(want[r["layer"], r["head"]][1], abs=1e-5)
    la, ha = d.ranking[0]["layer"], d.ranking[0]["head"]
    ma, mb, delta, masked = d.matrices(la, ha)
    assert delta.shape == (8, 8) and not masked.any()
    np.testing.assert_array_equal(ma, a.head(la, ha))
    # The equal tokens alone, as before: five of them, and another ranking.
    eq = compare(a, b, substitutions=False)
    assert eq.ia.tolist() == [0, 1, 3, 4, 7] and not eq.changed.any()
    assert eq.labels == ["[CLS]", "the", "to", "the", "[SEP]"]
    assert [r["js"] for r in eq.ranking] != [r["js"] for r in d.ranking]


def test_identical_tokens_change_nothing(gpt2_run):
    d = compare(gpt2_run, gpt2_run)
    assert d.ia.tolist() == list(range(len(gpt2_run.tokens))) and not d.changed.any()
    assert d.labels == [t.text for t in gpt2_run.tokens]


def test_diff_cli_ranks_and_draws_the_substitutions(keys_runs, tmp_path):
    import re

    out = tmp_path / "keys.svg"
    res = cli("diff", KEYS_A, KEYS_B, "--json", "-o", out, "-q")
    assert res.returncode == 0, res.stderr.decode()
    ranking = json.loads(res.stdout)
    want = _ranking_over_every_position(*keys_runs)
    assert len(ranking) == len(want)
    for r in ranking:  # over all eight tokens, the three substituted ones included
        assert r["mean_abs"] == pytest.approx(want[r["layer"], r["head"]][0], abs=1e-6)
        assert r["js"] == pytest.approx(want[r["layer"], r["head"]][1], abs=1e-5)
    svg = out.read_text("utf-8")
    texts = re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)
    for label in ("keys→key", "cabinet→cabinets", "are→is"):
        assert texts.count(label) == 6, label  # rows and columns of A, B and A − B
    assert "to" in texts and "keys" not in texts and "key" not in texts
    assert f"A: {KEYS_A}" in texts and f"B: {KEYS_B}" in texts
    assert any("3 substituted" in t for t in texts)


def test_diff_figure_marks_substitutions_and_keeps_masked_slots(keys_runs, gpt2_dir):
    import matplotlib.colors as mcolors

    from attnmap.plot import CHANGED_COLOR, diff_figure

    d = compare(*keys_runs)
    fig = diff_figure(d)
    panels = [ax for ax in fig.axes if ax.get_title() in ("A", "B", "A − B")]
    assert len(panels) == 3
    for ax in panels:
        for tl in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
            sub = "→" in tl.get_text()
            assert (mcolors.to_hex(tl.get_color()) == CHANGED_COLOR) == sub, tl.get_text()
        assert [t.get_text() for t in ax.get_yticklabels()] == KEYS_LABELS
    title = fig.get_suptitle()
    assert f"A: {KEYS_A}\nB: {KEYS_B}" in title
    # A causal model: the masked future is hatched in all three panels and a substituted
    # token's row and column stay (the tiny GPT-2 splits nothing here but keys/key).
    a = attnmap.capture("The keys to the table", model=gpt2_dir)
    b = attnmap.capture("The key to the table", model=gpt2_dir)
    d = compare(a, b)
    assert d.changed.sum() == 1 and len(d.ia) == len(a.tokens)
    _, _, delta, masked = d.matrices(0, 0)
    np.testing.assert_array_equal(masked, np.triu(np.ones_like(masked), 1))
    fig = diff_figure(d, 0, 0, values=True)
    for ax in [ax for ax in fig.axes if ax.get_title() in ("A", "B", "A − B")]:
        img = ax.get_images()[0]
        np.testing.assert_array_equal(np.ma.getmaskarray(img.get_array()), masked)
        assert ax.patch.get_hatch() == "////"
        # every visible cell prints its value: n(n+1)/2 of them, masked ones none
        n = len(d.ia)
        assert len([t for t in ax.texts]) == n * (n + 1) // 2


def test_align_two_texts():
    ia, ib = align([5, 1, 2, 3, 9], [5, 1, 7, 3, 9])
    assert ia.tolist() == [0, 1, 3, 4] and ib.tolist() == [0, 1, 3, 4]
    ia, ib = align([1, 2, 3], [0, 1, 2, 3])
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [1, 2, 3]


def test_diff_errors(gpt2_dir, tmp_path):
    a = attnmap.capture("The cat sat on the mat.", model=gpt2_dir)
    b = attnmap.capture("When Mary and John went to the store", model=gpt2_dir)
    with pytest.raises(attnmap.AttnmapError, match="cannot align.*--words"):
        compare(a, b)
    assert_user_error(cli("diff", "The cat", "--model", gpt2_dir), "second text")
    assert_user_error(cli("diff", "The cat", "The dog", "--model", gpt2_dir, "--against",
                          gpt2_dir), "not both")


def test_predictions_equal_softmax_of_logits(gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = attnmap.capture(TEXT, model=gpt2_dir, predictions=True, top_k=3)
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    ids = [t.id for t in run.tokens]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()
    preds = run.predictions
    assert len(preds) == len(ids)
    for pos, rec in enumerate(preds):
        top = np.argsort(-probs[pos])[:3]
        assert [p["p"] for p in rec["top"]] == pytest.approx(probs[pos, top].tolist(), abs=1e-6)
        assert [p["token"] for p in rec["top"]] == [
            t.text for t in attnmap.tokens.make_tokens(tok, top.tolist())]
        if pos + 1 < len(ids):
            nxt = ids[pos + 1]
            assert rec["next"]["p"] == pytest.approx(float(probs[pos, nxt]), abs=1e-6)
            assert rec["next"]["rank"] == int((probs[pos] > probs[pos, nxt]).sum()) + 1
            assert rec["next"]["surprisal"] == pytest.approx(-np.log2(probs[pos, nxt]), rel=1e-5)
        else:
            assert rec["next"] is None


def test_predictions_stored_and_old_files_still_load(gpt2_dir, tmp_path):
    import json as _json

    from safetensors import safe_open

    with_p = attnmap.capture(TEXT, model=gpt2_dir, predictions=True)
    plain = attnmap.capture(TEXT, model=gpt2_dir)
    f2 = with_p.save(tmp_path / "p.safetensors")
    f1 = plain.save(tmp_path / "old.safetensors")
    for f, version in ((f1, 1), (f2, 2)):
        with safe_open(str(f), framework="numpy") as fh:
            assert _json.loads(fh.metadata()["attnmap"])["format_version"] == version
    assert attnmap.load(f2).predictions == with_p.predictions
    old = attnmap.load(f1)
    assert old.predictions is None
    fig = attnmap.heatmap(old, 0, 0)
    assert fig.axes


def test_predict_cli(gpt2_dir, bert_dir):
    res = cli("predict", "The cat sat", "--model", gpt2_dir, "--json", "--top-k", "2", "-q")
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)
    assert [p["position"] for p in preds] == list(range(len(preds)))
    assert all(len(p["top"]) == 2 for p in preds)
    assert preds[-1]["next"] is None and set(preds[0]["next"]) >= {"token", "p", "rank"}
    res = cli("predict", "The cat sat on the <mask> .", "--model", bert_dir, "--json", "-q")
    assert res.returncode == 0, res.stderr
    masked = json.loads(res.stdout)
    assert len(masked) == 1 and masked[0]["token"] == "<mask>" and masked[0]["next"] is None
    assert_user_error(cli("predict", "The cat sat", "--model", bert_dir), "mask")
    assert_user_error(cli("predict", "The cat sat"), "no language-model head")
    table = cli("predict", "The cat sat", "--model", gpt2_dir, "-q")
    assert table.returncode == 0 and "rank" in table.stdout
