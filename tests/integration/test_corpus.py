"""The corpus census (attnmap census) over the hand-built GPT-2 of tests/_handmade.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import attnmap
from attnmap.analysis.corpus import ratio_ci95
from attnmap.analysis.scores import SCORE_NAMES

from .._cli import run_cli
from .._handmade import WORDS, build_handmade

N_DOCS = 60


def corpus_texts(n: int = N_DOCS, seed: int = 0) -> list[str]:
    """Random word sequences, each repeated once (so induction has targets)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        out.append(" ".join(r + r))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two torch threads on a busy two-core machine are several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    return build_handmade(tmp_path_factory.mktemp("corpus") / "gpt2")


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                         for i, t in enumerate(corpus_texts())), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def clean(handmade, jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "clean"
    r = run_cli("census", jsonl, "--model", handmade, "-o", out, "--batch-size", "7")
    assert r.returncode == 0, r.stderr
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text("utf-8"))


def assert_same_summary(a: dict, b: dict, tol: float = 1e-12) -> None:
    """Equal summaries; numbers may differ in the last bits (documents are summed in another
    order when they fall into other shards)."""
    assert {k: v for k, v in a.items() if k != "heads"} == {
        k: v for k, v in b.items() if k != "heads"}
    assert len(a["heads"]) == len(b["heads"])
    for ha, hb in zip(a["heads"], b["heads"]):
        assert (ha["stack"], ha["layer"], ha["head"]) == (hb["stack"], hb["layer"], hb["head"])
        for name in SCORE_NAMES:
            sa, sb = ha["scores"][name], hb["scores"][name]
            assert (sa is None) == (sb is None), (ha, name)
            if sa is not None:
                assert sa["mean"] == pytest.approx(sb["mean"], rel=tol, abs=tol)
                assert (sa["ci95"] is None) == (sb["ci95"] is None)
                if sa["ci95"] is not None:
                    assert sa["ci95"] == pytest.approx(sb["ci95"], rel=tol, abs=tol)


def _ranked(summary: dict, name: str) -> list[tuple[float, int, int]]:
    vals = [(h["scores"][name]["mean"], h["layer"], h["head"]) for h in summary["heads"]
            if h["scores"][name] is not None]
    return sorted(vals, key=lambda v: -v[0])


@pytest.mark.parametrize(("score", "where"), [
    ("previous_token", (0, 0)), ("self", (0, 1)), ("first_token", (0, 2)),
    ("entropy_norm", (0, 3)), ("induction", (1, 0)), ("duplicate_token", (1, 1)),
])
def test_the_census_ranks_each_planted_head_first(clean, handmade, score, where):
    summary = _summary(clean)
    assert summary["docs"] == N_DOCS and summary["skipped"] == 0
    assert summary["model"] == str(handmade)
    ranked = _ranked(summary, score)
    assert ranked[0][1:] == where
    assert ranked[0][0] > ranked[1][0] + 0.1


def test_files_hold_one_row_per_document_and_head_and_means_recompute(clean):
    heads = pq.read_table(clean / "heads.parquet").to_pandas()
    assert len(heads) == N_DOCS * 2 * 4
    assert not heads.duplicated(["doc", "stack", "layer", "head"]).any()
    assert sorted(heads["doc"].unique()) == list(range(N_DOCS))
    for name in SCORE_NAMES:
        assert {name, f"{name}_sum", f"{name}_rows"} <= set(heads.columns)
    docs = pq.read_table(clean / "docs.parquet").to_pandas()
    summary = _summary(clean)
    assert summary["tokens"] == int(docs["tokens"].sum())
    assert summary["tokens"] == sum(1 + len(t.split()) for t in corpus_texts())
    # corpus mean = Σ numerators / Σ rows, and the interval is the documented delta method
    for h in summary["heads"]:
        sel = heads[(heads["layer"] == h["layer"]) & (heads["head"] == h["head"])]
        for name in ("induction", "entropy", "self"):
            mean, low, high = ratio_ci95(sel[f"{name}_sum"], sel[f"{name}_rows"])
            got = h["scores"][name]
            assert got["mean"] == pytest.approx(sel[f"{name}_sum"].sum()
                                                / sel[f"{name}_rows"].sum(), rel=1e-12)
            assert got["mean"] == pytest.approx(mean, rel=1e-12)
            assert got["ci95"] == pytest.approx([low, high], rel=1e-9, abs=1e-12)
    # a score with no target row anywhere is null: next_token has none on layer 0 head 0
    h00 = summary["heads"][0]
    assert h00["scores"]["next_token"] is None


def test_per_document_values_equal_head_scores_of_that_document(clean, handmade):
    heads = pq.read_table(clean / "heads.parquet").to_pandas()
    texts = corpus_texts()
    for doc in (0, 17, N_DOCS - 1):
        want = attnmap.head_scores(attnmap.capture(texts[doc], model=handmade))
        rows = heads[heads.doc == doc].sort_values(["layer", "head"])
        for e, (_, row) in zip(want, rows.iterrows()):
            assert (e["layer"], e["head"]) == (row["layer"], row["head"])
            for name in SCORE_NAMES:
                v = e["scores"][name]
                if v is None:
                    assert row[f"{name}_rows"] == 0 and np.isnan(row[name])
                else:
                    assert row[name] == pytest.approx(v, abs=1e-9)


def test_a_rerun_resumes_and_a_changed_model_or_corpus_is_refused(clean, handmade, jsonl,
                                                                   tmp_path):
    before = (clean / "summary.json").read_text()
    r = run_cli("census", jsonl, "--model", handmade, "-o", clean)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {N_DOCS} of {N_DOCS} documents already done" in r.stderr
    assert (clean / "summary.json").read_text() == before
    # another corpus into the same folder
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "w1 w2 w1 w2"}) + "\n", encoding="utf-8")
    r = run_cli("census", other, "--model", handmade, "-o", clean)
    assert r.returncode == 2
    assert "holds a census of a different corpus" in r.stderr and "--restart" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # the same corpus, another model (one weight changed)
    import shutil

    from safetensors.numpy import load_file, save_file

    changed = tmp_path / "gpt2b"
    shutil.copytree(handmade, changed)
    w = load_file(changed / "model.safetensors")
    w["transformer.ln_f.bias"] = w["transformer.ln_f.bias"] + 1
    save_file(w, changed / "model.safetensors", metadata={"format": "pt"})
    r = run_cli("census", jsonl, "--model", changed, "-o", clean)
    assert r.returncode == 2 and "different model" in r.stderr
    assert (clean / "summary.json").read_text() == before


def _inputs(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    texts = corpus_texts(6, seed=3)
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n".join(t.replace(" ", "\n", 1) for t in texts),
                                    encoding="utf-8")
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    import datasets

    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    return {"txt": (["c.txt"], []), "blank": (["b.txt"], ["--split", "blank"]),
            "parquet": (["c.parquet"], ["--field", "body"]), "datasets": (["ds"], ["--field",
                                                                                  "body"])}


def test_every_input_format_gives_the_same_census(handmade, tmp_path):
    summaries = {}
    for kind, (files, extra) in _inputs(tmp_path).items():
        r = run_cli("census", *[tmp_path / f for f in files], *extra, "--model", handmade,
                    "-o", tmp_path / f"out-{kind}")
        assert r.returncode == 0, (kind, r.stderr)
        summaries[kind] = _summary(tmp_path / f"out-{kind}")
    first = summaries.pop("txt")
    assert first["docs"] == 6
    for s in summaries.values():
        assert_same_summary(s, first)


def test_max_docs_max_tokens_and_chat(handmade, jsonl, tmp_path):
    r = run_cli("census", jsonl, "--model", handmade, "-o", tmp_path / "a", "--max-docs", "5",
                "--max-tokens", "6")
    assert r.returncode == 0, r.stderr
    docs = pq.read_table(tmp_path / "a" / "docs.parquet").to_pandas()
    assert list(docs["doc"]) == [0, 1, 2, 3, 4]
    assert (docs["tokens"] == 6).all() and docs["truncated"].all()
    assert (docs["tokens_in"] > 6).all()
    assert _summary(tmp_path / "a")["tokens"] == 30
    # chat records need a template: this tokenizer has none, and says so per record
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"text": [{"role": "user", "content": "w1 w2"}]}) + "\n",
                    encoding="utf-8")
    r = run_cli("census", chat, "--chat", "--model", handmade, "-o", tmp_path / "c")
    assert r.returncode == 2
    assert "chat.jsonl line 1" in r.stderr and "chat template" in r.stderr


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"text": "w1 w2"}\n{"body": "w3"}\n', "c.jsonl", "c.jsonl line 2: no field 'text'"),
    ('{"text": "w1 w2"}\n{"text": 7}\n', "c.jsonl", "c.jsonl line 2: not text (int)"),
    ('{"text": "w1 w2"}\nnot json\n', "c.jsonl", "c.jsonl line 2: not JSON"),
    ('{"text": "w1"}\n{"text": ""}\n', "c.jsonl", "c.jsonl line 2: empty text"),
    ("", "c.txt", "holds no documents"),
    (b"w1 w2\n\xff\xfe\n", "c.txt", "c.txt' line 2 is not UTF-8"),
    ("w1\n", "c.csv", "unknown corpus format '.csv'"),
])
def test_bad_input_is_one_line_naming_file_and_record(handmade, tmp_path, content, name,
                                                       message):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run_cli("census", p, "--model", handmade, "-o", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_skip_bad_counts_what_it_skips(handmade, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "w1 w2 w1"}\n{"text": null}\n{"x": 1}\n{"text": "w3 w4"}\n',
                 encoding="utf-8")
    r = run_cli("census", p, "--model", handmade, "-o", tmp_path / "out", "--skip-bad")
    assert r.returncode == 0, r.stderr
    s = _summary(tmp_path / "out")
    assert (s["docs"], s["skipped"]) == (2, 2)
    docs = pq.read_table(tmp_path / "out" / "docs.parquet").to_pandas()
    assert list(docs["doc"]) == [0, 3]  # documents keep their place in the corpus
    # a document longer than the model's maximum (63 words + <s>) is a bad record too
    p.write_text(json.dumps({"text": " ".join(WORDS * 3)}) + "\n", encoding="utf-8")
    r = run_cli("census", p, "--model", handmade, "-o", tmp_path / "long")
    assert r.returncode == 2 and "c.jsonl line 1: 85 tokens" in r.stderr
    assert "--max-tokens 64" in r.stderr


def test_ray_is_named_when_missing(handmade, jsonl, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    r = run_cli("census", jsonl, "--model", handmade, "-o", tmp_path / "o", "--engine", "ray")
    assert r.returncode == 2
    assert "pip install 'attnmap[ray]'" in r.stderr


@pytest.mark.slow
def test_killed_mid_run_resumes_to_the_clean_result(clean, handmade, jsonl, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(attnmap.__file__).parents[1]))
    cmd = [sys.executable, "-m", "attnmap", "census", str(jsonl), "--model", str(handmade),
           "-o", str(out), "--batch-size", "3", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a few finished shards, then kill
        if len(list((out / "shards").glob("[0-9]*.parquet"))) >= 3 if out.exists() else False:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("[0-9]*.parquet")))
    assert 3 <= done < -(-N_DOCS // 3), "the census was not caught mid-run"
    assert not (out / "summary.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_same_summary(_summary(out), _summary(clean))
    heads = pq.read_table(out / "heads.parquet").to_pandas()
    assert len(heads) == N_DOCS * 8
    assert not heads.duplicated(["doc", "stack", "layer", "head"]).any()


def test_the_report_page(clean, tmp_path):
    out = tmp_path / "report.html"
    r = run_cli("html", "--census", clean, "-o", out)
    assert r.returncode == 0, r.stderr
    html = out.read_text("utf-8")
    assert "attention pages" in r.stderr and "3 attention pages" in r.stderr
    data = json.loads(html.split('id="census-data">')[1].split("</script>")[0])
    assert data["docs"] == N_DOCS and len(data["heads"]) == 8
    assert len(data["pages"]) == 3
    det = data["detail"][0]["previous_token"]
    assert sum(det["hist"]["counts"]) == N_DOCS and len(det["top"]) == 5


def test_document_text_in_the_report_is_data(tmp_path):
    from attnmap.viewer.census import census_page

    evil = "</script><script>alert(1)</script><!--"
    data = {"model": evil, "docs": 1, "tokens": 1, "skipped": 0, "scores": ["self"],
            "heads": [], "detail": [], "documents": {"0": {"where": evil, "preview": evil}}}
    page = census_page(data, {0: "<html>" + evil + "</html>"})
    body = page.split('id="census-data">')[1]
    data_text = body.split("</script>")[0]
    assert "<" not in data_text and json.loads(data_text)["documents"]["0"]["preview"] == evil
    assert page.count("<script") == 2  # the data element and the page's own script
