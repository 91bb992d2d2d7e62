"""`POST /api/runs/{id}/perturb` on the app (in process, FastAPI's TestClient): the text run
again with one token removed (or masked), stored as a run, and diffed against the original;
and the diff endpoints (`GET /api/diff/{a}/{b}` and its two aligned payloads) the page's diff
view reads."""

from __future__ import annotations

import numpy as np
import pytest

import attnmap
from attnmap.app.server import create_app
from attnmap.diff import compare

from .test_app import assert_error, client_for

TEXT = "The cat that sat on the mat was black."
MAX_RUNS = 6


@pytest.fixture(scope="module")
def client(gpt2_dir, bert_dir, t5_dir):
    app = create_app([str(gpt2_dir), str(bert_dir), str(t5_dir)], max_runs=MAX_RUNS)
    with client_for(app) as c:
        yield c


def test_remove_a_token_and_diff(client, gpt2_dir):
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()
    ref = attnmap.capture(TEXT, model=gpt2_dir)
    pos = next(i for i, t in enumerate(ref.tokens) if t.text.strip("␣") == "mat")
    tok = ref.tokens[pos]
    r = client.post(f"/api/runs/{orig['id']}/perturb", json={"position": pos, "mode": "remove"})
    assert r.status_code == 201, r.text
    out = r.json()
    # " mat" is cut with its space, so the model sees the same tokens less that one.
    assert TEXT[tok.start - 1 : tok.end] == " mat"
    want_text = TEXT[: tok.start - 1] + TEXT[tok.end :]
    assert out["text"] == want_text and out["run"]["text"] == want_text
    assert out["run"]["tokens"] == [t.text for i, t in enumerate(ref.tokens) if i != pos]
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
    # The mask is one token in the token's place: a substitution, so the masked token keeps
    # its slot in the comparison, and the ranking is attnmap.diff.compare's.
    assert out["run"]["tokens"] == [mask if i == pos else t.text
                                    for i, t in enumerate(ref.tokens)]
    assert out["diff_error"] is None
    d = compare(ref, attnmap.capture(out["text"], model=bert_dir))
    n = len(ref.tokens)
    assert d.ia.tolist() == d.ib.tolist() == list(range(n))
    assert np.flatnonzero(d.changed).tolist() == [pos]
    assert out["aligned"] == n
    got = client.get(f"/api/diff/{orig['id']}/{out['run']['id']}").json()
    assert got["positions"] == {"a": list(range(n)), "b": list(range(n))}
    assert got["changed"] == [i == pos for i in range(n)]
    assert [(x["layer"], x["head"]) for x in out["ranking"]] == \
        [(x["layer"], x["head"]) for x in d.ranking]
    for got, want in zip(out["ranking"], d.ranking, strict=True):
        assert got["js"] == pytest.approx(want["js"], abs=1e-6)


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


# --- the diff endpoints ----------------------------------------------------------------------
def check_payload(blob: bytes, run, idx, stack: str = "self") -> None:
    """`blob` is `run` cut to positions `idx` on both axes: tokens, shape, mask, values."""
    from attnmap.viewer import payload

    got = payload.decode(blob)
    (st,) = got["header"]["stacks"]
    assert st["name"] == stack
    assert st["query_tokens"] == [run.query_tokens(stack)[i].text for i in idx]
    n_layers = run.stack(stack).n_layers
    assert sorted(got["layers"]) == [(stack, i) for i in range(n_layers)]  # every layer inside
    masked = run.stack(stack).masked[np.ix_(idx, idx)]
    for li in range(n_layers):
        chunk = got["layers"][stack, li]
        want = run.layer(li, stack)[:, idx][:, :, idx]  # [head, query, key]
        assert chunk["values"].shape == want.shape
        assert (chunk["masked"] == np.broadcast_to(masked, want.shape)).all()
        # quantised to 1/128 of each row's max (the row over the kept keys)
        np.testing.assert_allclose(chunk["values"], np.where(masked, 0, want), atol=1 / 200)


def test_diff_after_perturb_serves_the_aligned_pair(client, gpt2_dir):
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()
    ref = attnmap.capture(TEXT, model=gpt2_dir)
    pos = next(i for i, t in enumerate(ref.tokens) if t.text.strip("␣") == "sat")
    out = client.post(f"/api/runs/{orig['id']}/perturb", json={"position": pos}).json()
    new_id = out["run"]["id"]
    d = compare(ref, attnmap.capture(out["text"], model=gpt2_dir))

    r = client.get(f"/api/diff/{orig['id']}/{new_id}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["a"], got["b"], got["stack"]) == (orig["id"], new_id, "self")
    assert got["aligned"] == out["aligned"] == len(d.ia)
    assert got["positions"] == {"a": d.ia.tolist(), "b": d.ib.tolist()}
    assert pos not in got["positions"]["a"]  # the removed token is the one left unaligned
    assert got["changed"] == [False] * len(d.ia)  # a removal substitutes nothing
    assert got["labels"] == {"a": TEXT, "b": out["text"]}
    assert got["ranking"] == out["ranking"]  # the same comparison the perturb call made
    assert [(x["layer"], x["head"]) for x in got["ranking"]] == \
        [(x["layer"], x["head"]) for x in d.ranking]

    for side, run, idx in (("a", d.a, d.ia), ("b", d.b, d.ib)):
        r = client.get(f"/api/diff/{orig['id']}/{new_id}/payload/{side}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        check_payload(r.content, run, idx)


def test_diff_of_any_two_runs_and_of_a_run_with_itself(client, gpt2_dir):
    other = "The dog that sat on the rug was black."
    a = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()
    b = client.post("/api/runs", json={"text": other, "model": str(gpt2_dir)}).json()
    d = compare(attnmap.capture(TEXT, model=gpt2_dir), attnmap.capture(other, model=gpt2_dir))
    got = client.get(f"/api/diff/{a['id']}/{b['id']}", params={"stack": "self"}).json()
    assert got["positions"] == {"a": d.ia.tolist(), "b": d.ib.tolist()}
    # cat/dog is a substitution: it keeps its slot, flagged as changed (the tiny tokenizer
    # splits "rug", so mat has no one counterpart)
    assert got["changed"] == d.changed.tolist() and 0 < sum(got["changed"])
    assert got["aligned"] == len(d.ia)
    subs = {a["tokens"][i] for i, c in zip(d.ia, d.changed) if c}
    assert "␣cat" in subs and "␣mat" not in subs
    assert [(x["layer"], x["head"]) for x in got["ranking"]] == \
        [(x["layer"], x["head"]) for x in d.ranking]
    for x, want in zip(got["ranking"], d.ranking, strict=True):
        assert x["js"] == pytest.approx(want["js"], abs=1e-6)
        assert x["mean_abs"] == pytest.approx(want["mean_abs"], abs=1e-6)
    check_payload(client.get(f"/api/diff/{a['id']}/{b['id']}/payload/b").content, d.b, d.ib)

    same = client.get(f"/api/diff/{a['id']}/{a['id']}").json()
    n = len(a["tokens"])
    assert same["positions"] == {"a": list(range(n)), "b": list(range(n))}
    assert same["changed"] == [False] * n
    assert len(same["ranking"]) == 4  # 2 layers × 2 heads, every one unchanged
    assert all(x["js"] == 0 and x["mean_abs"] == 0 for x in same["ranking"])
    pa = client.get(f"/api/diff/{a['id']}/{a['id']}/payload/a").content
    assert pa == client.get(f"/api/diff/{a['id']}/{a['id']}/payload/b").content


def test_diff_errors(client, gpt2_dir):
    a = client.post("/api/runs", json={"text": TEXT, "model": str(gpt2_dir)}).json()["id"]
    far = client.post("/api/runs", json={"text": "zzzz qqqq xxxx", "model": str(gpt2_dir)})
    far = far.json()["id"]
    for url in (f"/api/diff/{a}/{far}", f"/api/diff/{a}/{far}/payload/a"):
        assert_error(client.get(url), 400, "cannot align")
    for url in (f"/api/diff/nope-1/{a}", f"/api/diff/{a}/nope-1",
                f"/api/diff/{a}/nope-1/payload/b"):
        assert_error(client.get(url), 404, "no run 'nope-1'")
    assert_error(client.get(f"/api/diff/{a}/{a}/payload/c"), 404, "payload/a or payload/b")
    assert_error(client.get(f"/api/diff/{a}/{a}", params={"stack": "cross"}), 400, "cross")
    # A run pushed out of the store says so, on the diff endpoints too.
    for _ in range(MAX_RUNS):
        client.post("/api/runs", json={"text": "The dog ran.", "model": str(gpt2_dir)})
    keep = client.get("/api/runs").json()[0]["id"]
    for url in (f"/api/diff/{a}/{keep}", f"/api/diff/{keep}/{a}/payload/a"):
        assert_error(client.get(url), 404, "evicted")


def test_runs_and_models_say_which_have_a_mask_token(client, gpt2_dir, bert_dir):
    # The page offers "mask" only where the tokenizer has a mask token; the server says which.
    from transformers import AutoTokenizer

    models = {m["id"]: m for m in client.get("/api/models").json()}
    for model in (bert_dir, gpt2_dir):
        want = AutoTokenizer.from_pretrained(model).mask_token
        assert models[str(model)]["mask_token"] == want
        run = client.post("/api/runs", json={"text": TEXT, "model": str(model)}).json()
        assert run["mask_token"] == want
        assert client.get(f"/api/runs/{run['id']}").json()["mask_token"] == want
        if want:
            out = client.post(f"/api/runs/{run['id']}/perturb",
                              json={"position": 1, "mode": "mask"}).json()
            assert want in out["text"]


def test_encoder_decoder_diff_is_on_the_encoder(client, t5_dir):
    # The decoder text is kept, the input loses a token: the diff compares encoder attention.
    orig = client.post("/api/runs", json={"text": TEXT, "model": str(t5_dir),
                                          "target": "Die Katze"}).json()
    ref = attnmap.capture(TEXT, model=t5_dir, target="Die Katze")
    pos = next(i for i, t in enumerate(ref.tokens) if t.text.strip("␣▁") == "mat")
    out = client.post(f"/api/runs/{orig['id']}/perturb", json={"position": pos}).json()
    assert out["diff_error"] is None and out["run"]["target_text"] == "Die Katze"
    new = attnmap.capture(out["text"], model=t5_dir, target="Die Katze")
    d = compare(ref, new)
    got = client.get(f"/api/diff/{orig['id']}/{out['run']['id']}").json()
    assert got["stack"] == d.stack == "encoder"
    assert got["positions"] == {"a": d.ia.tolist(), "b": d.ib.tolist()}
    blob = client.get(f"/api/diff/{orig['id']}/{out['run']['id']}/payload/b").content
    check_payload(blob, new, d.ib, stack="encoder")
    dec = client.get(f"/api/diff/{orig['id']}/{out['run']['id']}",
                     params={"stack": "decoder"}).json()
    assert dec["aligned"] == len(ref.target_tokens)  # same decoder text: every token aligns
