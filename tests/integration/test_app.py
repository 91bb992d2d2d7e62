"""`attnmap serve` as a real process on a free port: the API, its errors and its limits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m attnmap serve`` in a subprocess; always killed by ``stop``."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnmap", "serve", "--no-browser", "--port",
             str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def wait(self, timeout: float = 180) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                     f"{self.output()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not answer within {timeout}s:\n{self.output()}")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def start(*args: str) -> Server:
    server = Server(*args)
    try:
        return server.wait()
    except BaseException:
        server.stop()
        raise


TEXT = "The cat that sat on the mat was black.\nIt was."


@pytest.fixture(scope="module")
def server(gpt2_dir):
    s = start("--model", str(gpt2_dir), "--max-runs", "3")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
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

    def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = client.post("/api/runs", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "limit")
    assert client.get("/api/health").json()["status"] == "ok"


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


def test_foreign_host_header_is_refused(client):
    # DNS rebinding: a web page whose domain resolves to 127.0.0.1 sends its own Host
    assert_error(client.get("/api/health", headers={"host": "evil.example"}), 400, "Host")
    assert client.get("/api/health", headers={"host": "localhost"}).status_code == 200


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/app/app.js").headers["content-type"].startswith("text/javascript")
    assert_error(client.get("/app/..%2Fserver.py"), 404)
    assert_error(client.get("/static/..%2F..%2Frun.py"), 404)


def test_timeout_answers_504_and_server_lives_on(gpt2_dir):
    s = start("--model", str(gpt2_dir), "--timeout", "0.001")
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            detail = assert_error(c.post("/api/runs", json={"text": TEXT * 3}), 504, "0.001 s")
            assert "--timeout" in detail
            assert c.get("/api/health").json()["status"] == "ok"
    finally:
        s.stop()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "attnmap", "serve", "--no-browser", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("--port", str(free_port()), "--model", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("attnmap: error: model directory")
    assert "Traceback" not in r.stderr

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = _cli("--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "already in use" in r.stderr and "Traceback" not in r.stderr

    r = _cli("--port", str(free_port()), "--max-runs", "0")
    assert r.returncode == 2 and "--max-runs" in r.stderr


def test_other_host_warns(tmp_path):
    # 127.0.0.2 is still this machine, but not the default address: the warning must show
    r = _cli("--host", "127.0.0.2", "--port", str(free_port()), "--model", str(tmp_path / "no"))
    assert "attnmap: warning: serving on 127.0.0.2" in r.stderr
    assert r.returncode == 2
