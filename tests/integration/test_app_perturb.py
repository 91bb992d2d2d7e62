"""`POST /api/runs/{id}/perturb` on a real `attnmap serve` process: the text run again with one
token removed (or masked), stored as a run, and diffed against the original."""

from __future__ import annotations

import pytest

import attnmap
from attnmap.diff import compare

from .test_app import assert_error, start

httpx = pytest.importorskip("httpx")
TEXT = "The cat that sat on the mat was black."


@pytest.fixture(scope="module")
def server(gpt2_dir, bert_dir):
    s = start("--model", str(gpt2_dir), "--model", str(bert_dir))
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def test_remove_a_token_and_diff(client, gpt2_dir):
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()
    ref = attnmap.capture(TEXT, model=gpt2_dir)
    pos = next(i for i, t in enumerate(ref.tokens) if t.text.strip("␣") == "mat")
    tok = ref.tokens[pos]
    r = client.post(f"/api/runs/{orig['id']}/perturb", json={"position": pos, "mode": "remove"})
    assert r.status_code == 201, r.text
    out = r.json()
    want_text = TEXT[: tok.start] + TEXT[tok.end :]
    assert out["text"] == want_text and out["run"]["text"] == want_text
    assert out["original"] == orig["id"] and out["diff_error"] is None
    # The new run is stored like any other and its ranking is attnmap.diff.compare's.
    assert out["run"]["id"] in [e["id"] for e in client.get("/api/runs").json()]
    d = compare(ref, attnmap.capture(want_text, model=gpt2_dir))
    assert out["aligned"] == len(d.ia) == len(ref.tokens) - 1
    assert [(x["layer"], x["head"]) for x in out["ranking"]] == \
        [(x["layer"], x["head"]) for x in d.ranking]
    for got, want in zip(out["ranking"], d.ranking, strict=True):
        assert got["mean_abs"] == pytest.approx(want["mean_abs"], abs=1e-6)
        assert got["js"] == pytest.approx(want["js"], abs=1e-6)


def test_mask_a_token_with_the_tokenizers_mask(client, bert_dir):
    from transformers import AutoTokenizer

    mask = AutoTokenizer.from_pretrained(bert_dir).mask_token
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(bert_dir)}).json()
    ref = attnmap.capture(TEXT, model=bert_dir)
    pos = next(i for i, t in enumerate(ref.tokens) if not t.special)
    tok = ref.tokens[pos]
    r = client.post(f"/api/runs/{orig['id']}/perturb", json={"position": pos, "mode": "mask"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["text"] == TEXT[: tok.start] + mask + TEXT[tok.end :]
    assert out["run"]["model"] == str(bert_dir)
    assert out["ranking"] is not None or "align" in out["diff_error"]


def test_bad_perturb_requests(client, gpt2_dir):
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()
    n = len(orig["tokens"])
    url = f"/api/runs/{orig['id']}/perturb"
    assert_error(client.post(url, json={"position": n}), 400, f"0..{n - 1}")
    assert client.post(url, json={"position": 0, "mode": "shuffle"}).status_code == 422
    assert client.post(url, json={"position": -1}).status_code == 422
    assert client.post("/api/runs/nope-1/perturb", json={"position": 0}).status_code == 404
    one = client.post("/api/runs", json={"text": "cat", "model": str(gpt2_dir)}).json()
    if len(one["tokens"]) == 1:
        assert_error(client.post(f"/api/runs/{one['id']}/perturb", json={"position": 0}), 400,
                     "leaves no text")
