"""The app's API in process (FastAPI's TestClient): its answers, errors and limits; and the
few things only a real `attnmap serve` process shows (sockets, Host header, the command line),
on the one server the test run shares."""

from __future__ import annotations

import socket

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from _server import free_port  # noqa: E402
from attnmap.app.server import create_app  # noqa: E402
from attnmap.cli import main  # noqa: E402


def client_for(app) -> TestClient:
    """A client of `app` in this process, sending the Host header a browser would send."""
    return TestClient(app, base_url="http://127.0.0.1")


TEXT = "The cat that sat on the mat was black.\nIt was."


@pytest.fixture(scope="module")
def client(gpt2_dir):
    with client_for(create_app([str(gpt2_dir)], max_runs=3)) as c:
        yield c


@pytest.fixture
def real(app_server):
    """A client of the shared real server (real sockets)."""
    with httpx.Client(base_url=app_server.url, timeout=60) as c:
        yield c


def assert_error(resp, status: int, *words: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail
    for w in words:
        assert w in detail, detail
    return detail


def test_health_models_openapi(client, gpt2_dir):
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["models"] == [str(gpt2_dir)]
    assert health["max_runs"] == 3
    models = client.get("/api/models").json()
    assert [m["id"] for m in models] == [str(gpt2_dir)]
    assert models[0]["layers"] == 2 and models[0]["heads"] == 2
    assert models[0]["max_length"] == 64 and models[0]["causal"] is True
    spec = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/models", "/api/runs", "/api/runs/{run_id}",
                 "/api/runs/{run_id}/payload", "/api/runs/{run_id}/layers/{stack}/{layer}"):
        assert path in spec["paths"], path
    assert "post" in spec["paths"]["/api/runs"]


def test_run_matches_in_process_capture(client, gpt2_dir):
    import attnmap

    ref = attnmap.capture(TEXT, model=gpt2_dir)
    r = client.post("/api/runs", json={"text": TEXT})
    assert r.status_code == 201, r.text
    run = r.json()
    n = len(ref.tokens)
    assert run["tokens"] == [t.text for t in ref.tokens]
    assert run["shape"] == {"self": [2, 2, n, n]}
    assert run["model"] == str(gpt2_dir) and run["causal"] is True
    assert run["text"] == TEXT

    same = client.get(f"/api/runs/{run['id']}").json()
    assert same["tokens"] == run["tokens"] and same["shape"] == run["shape"]
    assert run["id"] in [e["id"] for e in client.get("/api/runs").json()]


def test_payload_and_layers_decode(client, gpt2_dir):
    import attnmap
    from attnmap.viewer import payload

    ref = attnmap.capture(TEXT, model=gpt2_dir)
    run_id = client.post("/api/runs", json={"text": TEXT}).json()["id"]

    r = client.get(f"/api/runs/{run_id}/payload")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    decoded = payload.decode(r.content)
    assert decoded["version"] == payload.PAYLOAD_VERSION
    assert decoded["layers"] == {}  # header only: layers come one by one
    (stack,) = decoded["header"]["stacks"]
    assert stack["name"] == "self"
    assert stack["query_tokens"] == [t.text for t in ref.tokens]

    for layer in (0, 1):
        r = client.get(f"/api/runs/{run_id}/layers/self/{layer}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        chunk = payload.decode_layer(r.content)
        assert (chunk["stack"], chunk["layer"]) == ("self", layer)
        want = ref.layer(layer)  # [head, query, key]
        assert chunk["values"].shape == want.shape
        # quantised to 1/128 of each row's max; masked cells are the causal upper triangle
        np.testing.assert_allclose(chunk["values"], np.where(ref.masked, 0, want), atol=1 / 200)
        assert (chunk["masked"] == np.broadcast_to(ref.masked, want.shape)).all()
    last = client.get(f"/api/runs/{run_id}/layers/self/-1").content
    assert last == client.get(f"/api/runs/{run_id}/layers/self/1").content


def _post(client, body):
    return client.post("/api/runs", json=body)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": ""}, 400, ["empty"]),
        ({"text": " \n\t "}, 400, ["empty"]),
        ({"text": "a\x00b"}, 400, ["NUL"]),
        ({"text": "cat " * 300}, 400, ["maximum of 64 tokens"]),
        ({"text": "hi", "model": "gpt2"}, 400, ["not one of this server's models"]),
        ({"text": "hi", "model": "../../etc/passwd"}, 400, ["not one of this server's models"]),
        ({"text": "hi", "model": "/etc/passwd"}, 400, ["not one of this server's models"]),
        ({"text": "hi", "model": "default"}, 400, ["not one of this server's models"]),
        ({"text": "hi", "trust_remote_code": True}, 400, ["trust_remote_code"]),
        ({"text": "hi", "code": "import os"}, 422, ["code"]),
        ({}, 422, ["text"]),
        ({"text": 5}, 422, ["text"]),
        ([1, 2], 422, []),
    ],
)
def test_bad_run_requests(client, body, status, words):
    assert_error(_post(client, body), status, *words)


def test_lone_surrogate_and_non_json(client):
    r = client.post("/api/runs", content=b'{"text": "a\\ud800b"}',
                    headers={"content-type": "application/json"})
    assert_error(r, 400, "surrogate")
    r = client.post("/api/runs", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(r, 422, "JSON")
    # a form post from another site (no CORS preflight) must not start a run
    r = client.post("/api/runs", content=b'{"text": "hi"}', headers={"content-type": "text/plain"})
    assert_error(r, 422, "Content-Type: application/json")


def test_huge_bodies_are_refused(client):
    big = b'{"text": "' + b"a" * 2_000_000 + b'"}'
    r = client.post("/api/runs", content=big, headers={"content-type": "application/json"})
    assert_error(r, 413, "1,048,576 bytes")
    assert client.get("/api/health").json()["status"] == "ok"


def test_streamed_huge_body_is_refused_on_the_socket(real):
    def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = real.post("/api/runs", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "limit")
    assert real.get("/api/health").json()["status"] == "ok"


def test_unknown_run_stack_layer(client):
    assert_error(client.get("/api/runs/nope"), 404, "no run 'nope'")
    assert_error(client.get("/api/runs/nope/payload"), 404, "no run")
    run_id = _post(client, {"text": "The cat sat."}).json()["id"]
    assert_error(client.get(f"/api/runs/{run_id}/layers/cross/0"), 404, "has: self")
    assert_error(client.get(f"/api/runs/{run_id}/layers/self/2"), 404, "0..1")
    assert_error(client.get(f"/api/runs/{run_id}/layers/self/-3"), 404, "0..1")
    assert_error(client.get(f"/api/runs/{run_id}/layers/self/x"), 422, "layer")
    assert_error(client.get("/api/nothing"), 404)


def test_lru_evicts_oldest_and_says_so(client):
    ids = [_post(client, {"text": f"The cat number {i} sat."}).json()["id"] for i in range(4)]
    assert_error(client.get(f"/api/runs/{ids[0]}"), 404, "was evicted", "3 most recent")
    assert_error(client.get(f"/api/runs/{ids[0]}/layers/self/0"), 404, "evicted")
    kept = [e["id"] for e in client.get("/api/runs").json()]
    assert kept == ids[:0:-1]  # newest first
    health = client.get("/api/health").json()
    assert health["runs"] == 3 and health["evicted"] >= 1
    # an id that was never issued is not called evicted
    prefix = ids[0].rsplit("-", 1)[0]
    assert_error(client.get(f"/api/runs/{prefix}-999999"), 404, "no run")


def test_foreign_host_header_is_refused(real):
    # DNS rebinding: a web page whose domain resolves to 127.0.0.1 sends its own Host
    assert_error(real.get("/api/health", headers={"host": "evil.example"}), 400, "Host")
    assert real.get("/api/health", headers={"host": "localhost"}).status_code == 200
    assert real.get("/api/health").status_code == 200  # 127.0.0.1:port, as httpx sends it


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/app/app.js").headers["content-type"].startswith("text/javascript")
    assert_error(client.get("/app/..%2Fserver.py"), 404)
    assert_error(client.get("/static/..%2F..%2Frun.py"), 404)


def test_timeout_answers_504_and_server_lives_on(gpt2_dir):
    with client_for(create_app([str(gpt2_dir)], timeout=0.001)) as c:
        detail = assert_error(c.post("/api/runs", json={"text": TEXT * 3}), 504, "0.001 s")
        assert "--timeout" in detail
        assert c.get("/api/health").json()["status"] == "ok"


def _cli(capsys, *args: str) -> tuple[int, str]:
    """`attnmap serve` in this process: its exit code and standard error."""
    capsys.readouterr()
    code = main(["serve", "--no-browser", *args])
    return code, capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "--port", str(free_port()), "--model", str(tmp_path / "missing"))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("attnmap: error: model directory")
    assert "Traceback" not in err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        code, err = _cli(capsys, "--port", str(busy.getsockname()[1]))
    assert code == 2 and "already in use" in err and "Traceback" not in err

    code, err = _cli(capsys, "--port", str(free_port()), "--max-runs", "0")
    assert code == 2 and "--max-runs" in err


def test_other_host_warns(tmp_path, capsys):
    # 127.0.0.2 is still this machine, but not the default address: the warning must show
    code, err = _cli(capsys, "--host", "127.0.0.2", "--port", str(free_port()),
                     "--model", str(tmp_path / "no"))
    assert "attnmap: warning: serving on 127.0.0.2" in err
    assert code == 2
