"""The server against rude clients, over real sockets: hang-ups mid-body, bodies that never
come, methods of a path, and a target the model cannot read."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time

import httpx
import pytest

import attnmap
from attnmap import AttnmapError

POST = (b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n")


def _send(port: int, data: bytes, *, reset: bool = False, half_close: bool = False) -> None:
    """Send `data` and hang up: a plain close, a reset (RST), or a half close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(data)
    time.sleep(0.05)
    if half_close:
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            s.recv(1000)
    s.close()


def _answer(port: int, data: bytes, timeout: float) -> tuple[int, dict, float]:
    """Send `data`, keep the connection open, read the answer: (status, body, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), time.monotonic() - t0


def test_clients_hanging_up_mid_body_leave_no_traceback(app_server):
    port = app_server.port
    body = json.dumps({"text": "The cat sat on the mat."}).encode()
    before = app_server.output()
    _send(port, POST + b"Content-Length: 100\r\n\r\n" + body[:9])
    _send(port, POST + b"Content-Length: 100\r\n\r\n" + body[:9], reset=True)
    _send(port, POST + b"Content-Length: 100\r\n\r\n" + body[:9], half_close=True)
    _send(port, POST + b"Content-Length: 900000\r\n\r\n" + b'{"text": "' + b"a" * 300_000)
    _send(port, POST + b"Content-Length: 5000000\r\n\r\n" + b"a" * 100_000)  # over the limit
    _send(port, POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"tex\r\n")
    _send(port, POST + b"Content-Length: %d\r\n\r\n" % len(body) + body, reset=True)
    assert httpx.get(app_server.url + "/api/health").status_code == 200
    time.sleep(0.5)  # let the server finish with the hung-up requests
    log = app_server.output()[len(before):]
    assert "Traceback" not in log and "Error" not in log, log


def test_methods_of_a_path(app_server):
    r = httpx.options(app_server.url + "/api/runs")
    assert r.status_code == 204
    assert [m.strip() for m in r.headers["allow"].split(",")] == ["GET", "HEAD", "POST",
                                                                  "OPTIONS"]
    head = httpx.head(app_server.url + "/api/runs")
    get = httpx.get(app_server.url + "/api/runs")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert httpx.head(app_server.url + "/").status_code == 200
    r = httpx.delete(app_server.url + "/api/runs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert "DELETE is not allowed on '/api/runs'" in r.json()["detail"]
    assert httpx.options(app_server.url + "/api/nothing").status_code == 404


def test_target_for_a_decoder_model_is_refused(app_server, gpt2_dir):
    r = httpx.post(app_server.url + "/api/runs",
                   json={"text": "The cat sat.", "target": "Die Katze"})
    assert r.status_code == 400
    assert "encoder-decoder" in r.json()["detail"] and "leave target out" in r.json()["detail"]
    with pytest.raises(AttnmapError, match="encoder-decoder.*leave target") as info:
        attnmap.capture("The cat sat.", model=gpt2_dir, target="Die Katze")
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def quick_server(gpt2_dir):
    """uvicorn in a thread serving an app whose bodies must arrive within half a second."""
    import uvicorn

    from _server import free_port
    from attnmap.app import create_app

    port = free_port()
    app = create_app([str(gpt2_dir)], body_timeout=0.5, max_body=4096)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_a_body_that_never_comes_is_408(quick_server):
    status, body, seconds = _answer(quick_server, POST + b"Content-Length: 999\r\n\r\n{", 10)
    assert status == 408, body
    assert body["detail"] == ("the request body did not arrive within 0.5 s (1 bytes of the 999 "
                              "promised); send the whole body at once")
    assert seconds < 8


def test_a_huge_promise_is_answered_not_held(quick_server):
    status, body, _ = _answer(quick_server, POST + b"Content-Length: 99999999\r\n\r\n{", 10)
    assert status == 413 and "4,096 bytes" in body["detail"]
    # and a whole body still works on the same server
    ok = httpx.post(f"http://127.0.0.1:{quick_server}/api/runs", json={"text": "The cat."})
    assert ok.status_code == 201
