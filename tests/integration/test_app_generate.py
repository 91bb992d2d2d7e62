"""Live generation in the app (``POST /api/generate``), against the test run's real
`attnmap serve` process (``app_server``: the tiny GPT-2, 64 positions, and the hostile one):
the Server-Sent Events stream, one generation per model, Stop, and cancel on disconnect."""

from __future__ import annotations

import json
import time

import pytest

httpx = pytest.importorskip("httpx")

PROMPT = "The cat sat"
MOST = 60  # the tiny GPT-2 has 64 positions: room for this after the prompt


def events(lines):
    """(name, data) of each Server-Sent Event in `lines` (a response's iter_lines)."""
    name, data = None, []
    for line in lines:
        if line == "":
            if name is not None:
                yield name, json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])


def open_stream(client, url, **body):
    return client.stream("POST", f"{url}/api/generate", json={"text": PROMPT, **body},
                         timeout=60)


def finish(it):
    """The remaining events; the last one must be done (or error)."""
    rest = list(it)
    assert rest and rest[-1][0] in ("done", "error"), rest[-3:]
    return rest


def test_the_stream_delivers_every_step_then_the_stored_run(app_server):
    url = app_server.url
    with httpx.Client() as c:
        with open_stream(c, url, max_new_tokens=12) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            got = list(events(r.iter_lines()))
        names = [n for n, _ in got]
        assert names == ["token"] * (len(got) - 1) + ["done"], names
        tokens = got[:-1]
        assert [d["step"] for _, d in tokens] == list(range(len(tokens)))
        done = got[-1][1]
        assert done["generated"] == len(tokens) >= 1
        assert done["stopped"] in ("length", "eos")
        if done["stopped"] == "length":
            assert len(tokens) == 12

        facts = c.get(f"{url}/api/runs/{done['id']}", timeout=30).json()
        assert facts["generated"] == len(tokens)
        assert facts["tokens"][-len(tokens):] == [d["token"] for _, d in tokens]
        assert facts["n_tokens"] == done["n_tokens"] == len(facts["tokens"])
        assert done["id"] in [e["id"] for e in c.get(f"{url}/api/runs", timeout=30).json()]
        payload = c.get(f"{url}/api/runs/{done['id']}/payload", timeout=30)
        assert payload.status_code == 200 and len(payload.content) > 100


def test_bad_requests_answer_json_before_any_stream(app_server):
    url = app_server.url
    with httpx.Client() as c:
        for body, words in [
            ({"text": PROMPT, "max_new_tokens": 100_000}, "above this server's limit"),
            ({"text": PROMPT, "max_new_tokens": 0}, "at least 1"),
            ({"text": PROMPT, "temperature": 0.5}, "do_sample"),
            ({"max_new_tokens": 3}, "text or as messages"),
            ({"text": PROMPT, "model": "/etc"}, "not one of this server's models"),
        ]:
            r = c.post(f"{url}/api/generate", json=body, timeout=30)
            assert r.status_code == 400, (body, r.text)
            assert r.headers["content-type"] == "application/json"
            assert words in r.json()["detail"], r.json()
        # a prompt that leaves no room in the model's 64 positions: an error event, one line
        with open_stream(c, url, text="word " * 70, max_new_tokens=5) as r:
            got = list(events(r.iter_lines()))
        assert [n for n, _ in got] == ["error"]
        assert "shorten" in got[0][1]["detail"] and "\n" not in got[0][1]["detail"]


def test_one_generation_per_model_and_stop_ends_it_early(app_server, hostile_gpt2_dir):
    url = app_server.url
    with httpx.Client() as c:
        with open_stream(c, url, max_new_tokens=MOST) as r:
            assert r.status_code == 200
            it = events(r.iter_lines())
            first = next(it)
            assert first == ("token", first[1]) and first[1]["step"] == 0
            # the same model again while it writes: refused, saying why and what to do
            again = c.post(f"{url}/api/generate", json={"text": PROMPT}, timeout=30)
            assert again.status_code == 409, again.text
            assert "already generating" in again.json()["detail"]
            stop = c.post(f"{url}/api/generate/stop", json={}, timeout=30).json()
            assert stop["stopped"] is True
            rest = finish(it)
        done = rest[-1][1]
        assert rest[-1][0] == "done", rest[-1]
        assert done["stopped"] == "cancelled"
        assert done["generated"] == 1 + len(rest) - 1 < MOST
        facts = c.get(f"{url}/api/runs/{done['id']}", timeout=30).json()
        assert facts["generated"] == done["generated"]
        # nothing is running now: stop says so, and the model generates again
        assert c.post(f"{url}/api/generate/stop", json={}, timeout=30).json()["stopped"] is False
        with open_stream(c, url, max_new_tokens=2) as r:
            assert r.status_code == 200
            assert finish(events(r.iter_lines()))[-1][0] == "done"


def test_the_other_model_generates_meanwhile(app_server, hostile_gpt2_dir):
    url = app_server.url
    with httpx.Client() as c:
        with open_stream(c, url, max_new_tokens=MOST) as r:
            it = events(r.iter_lines())
            next(it)
            with open_stream(c, url, model=str(hostile_gpt2_dir), max_new_tokens=3) as r2:
                assert r2.status_code == 200
                assert finish(events(r2.iter_lines()))[-1][0] == "done"
            c.post(f"{url}/api/generate/stop", json={}, timeout=30)
            finish(it)


def test_a_client_that_leaves_cancels_its_generation(app_server):
    url = app_server.url
    with httpx.Client() as c:
        before = {e["id"] for e in c.get(f"{url}/api/runs", timeout=30).json()}
        with open_stream(c, url, max_new_tokens=MOST) as r:
            it = events(r.iter_lines())
            assert next(it)[0] == "token"
        # the connection is closed: the generation stops at its next step and is stored
        end = time.monotonic() + 60
        new = []
        while not new and time.monotonic() < end:
            new = [e for e in c.get(f"{url}/api/runs", timeout=30).json()
                   if e["id"] not in before]
            time.sleep(0.05)
        assert new, "the cancelled generation was not stored"
        facts = c.get(f"{url}/api/runs/{new[0]['id']}", timeout=30).json()
        assert 1 <= facts["generated"] < MOST
        # and the model takes the next generation
        with open_stream(c, url, max_new_tokens=2) as r:
            assert r.status_code == 200, r.read()
            assert finish(events(r.iter_lines()))[-1][0] == "done"
