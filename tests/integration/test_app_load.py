"""The app under load (the shared real `attnmap serve` process) and under fuzzing (in process).

Bounded: 200 runs from 20 clients on the tiny GPT-2, ~100 Hypothesis examples. Correctness
only: how fast and how much memory is measured by ``bench/bench_app_load.py``.
"""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import pytest

httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attnmap.app.server import create_app  # noqa: E402

from .test_app import assert_error, client_for  # noqa: E402

pytestmark = pytest.mark.slow

CLIENTS, PER_CLIENT = 20, 10
WORDS = ["cat", "dog", "mat", "park", "table", "store", "drink", "fox"]


def load_text(i: int) -> str:
    """A short text (under the tiny GPT-2's 64 tokens), different for every `i`."""
    return f"Run {i}: the {WORDS[i % 8]} that sat on the {WORDS[(i // 8) % 8]} was black."


def test_200_runs_from_20_clients(app_server):
    with httpx.Client(base_url=app_server.url, timeout=60) as c:
        before = c.get("/api/health").json()
    made: list[list[str]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []
    health: list[int] = []  # statuses of /api/health polled during the load
    done = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=app_server.url, timeout=60) as c:
            for j in range(PER_CLIENT):
                i = n * PER_CLIENT + j
                try:
                    r = c.post("/api/runs", json={"text": load_text(i)})
                    if r.status_code != 201:
                        failures.append(f"{i}: {r.status_code} {r.text[:200]}")
                    elif r.json()["text"] != load_text(i):
                        failures.append(f"{i}: answered with another run's text")
                    else:
                        made[n].append(r.json()["id"])
                except httpx.HTTPError as exc:
                    failures.append(f"{i}: {type(exc).__name__} {exc}")

    def poll() -> None:
        with httpx.Client(base_url=app_server.url, timeout=30) as c:
            while not done.is_set():
                try:
                    health.append(c.get("/api/health").status_code)
                except httpx.HTTPError:
                    health.append(0)
                done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    poller.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"

    assert failures == []
    assert health and all(status == 200 for status in health), health  # no 5xx, no resets
    ids = [i for ids in made for i in ids]
    assert len(set(ids)) == CLIENTS * PER_CLIENT  # every run got its own id

    with httpx.Client(base_url=app_server.url, timeout=30) as c:
        h = c.get("/api/health").json()
        keep = h["max_runs"]
        assert h["runs"] == keep
        assert h["evicted"] - before["evicted"] == before["runs"] + len(ids) - keep
        kept = [e["id"] for e in c.get("/api/runs").json()]
        assert len(kept) == keep and set(kept) <= set(ids)  # the newest runs are the load's
        # the store counts exactly the bytes of the runs it keeps
        assert h["bytes"] == sum(c.get(f"/api/runs/{i}").json()["bytes"] for i in kept)
        # each client's first run is long gone, and the answer says so
        for first in {ids[0] for ids in made} - set(kept):
            assert_error(c.get(f"/api/runs/{first}"), 404, "was evicted", f"{keep} most recent")


@pytest.fixture(scope="module")
def client(gpt2_dir):
    with client_for(create_app([str(gpt2_dir)], max_runs=5)) as c:
        yield c


# --- fuzzing the JSON API: nothing a client sends may produce a 5xx ---------------------------
_text = st.one_of(
    st.text(st.characters(codec=None), max_size=200),  # any code point, NUL and surrogates too
    st.sampled_from(["", " ", "\x00", "\ud800", "\u2028", "</script>", "a" * 300_000,
                     "The cat sat.", "🐈" * 50, "e\u0301" * 40]),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=8,
)
_body = st.one_of(
    st.fixed_dictionaries(
        {"text": _text},
        optional={"model": st.one_of(_text, st.sampled_from(["../x", "/etc/passwd", "gpt2"])),
                  "target": _json, "trust_remote_code": _json},
    ),
    st.dictionaries(st.sampled_from(["text", "model", "target", "x"]), _json, max_size=4),
    _json,
)


def _dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # lone surrogates travel as \ud800


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_body, raw=st.one_of(st.none(), st.binary(max_size=64)),
       path=st.text(st.characters(codec="utf-8"), max_size=30))
def test_fuzz_api_never_5xx(client, body, raw, path):
    # In process: a crash in the app raises here (TestClient re-raises server errors).
    content = raw if raw is not None else _dumps(body)
    r = client.post("/api/runs", content=content, headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    assert r.status_code in (201, 400, 413, 422), r.text
    if r.status_code != 201:
        assert isinstance(r.json()["detail"], str)
    p = quote(path, safe="")  # any string, percent-encoded as a browser would
    for url in (f"/api/runs/{p}", f"/api/runs/{p}/layers/self/{p}", f"/api/runs/{p}/payload"):
        r = client.get(url)
        assert r.status_code < 500, (url, r.text)
