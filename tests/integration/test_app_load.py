"""`attnmap serve` under load and under fuzzing, as a real process on loopback.

Bounded: 200 runs from 20 clients on a tiny GPT-2, ~100 Hypothesis examples.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_app import start  # noqa: E402

import _models  # noqa: E402

pytestmark = pytest.mark.slow

CLIENTS, PER_CLIENT = 20, 10
MAX_RUNS = 5
SENTENCES = _models.CORPUS[:5]


def load_text(i: int) -> str:
    """~150–240 tokens: each run holds 4 layers × 4 heads × n² float32, about 1.5–3.7 MB."""
    k = 11 + i % 6
    return " ".join(SENTENCES[(i + j) % 5] for j in range(k)) + f" Run {i}."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # Longer context than the shared tiny GPT-2, so that runs are big enough for an unbounded
    # store to show in the process's memory (200 runs ≈ 500 MB).
    return _models.build_gpt2(tmp_path_factory.mktemp("load") / "gpt2", layers=4, heads=4,
                              n_positions=256)


@pytest.fixture(scope="module")
def server(model_dir):
    s = start("--model", str(model_dir), "--max-runs", str(MAX_RUNS))
    yield s
    s.stop()


def test_200_runs_from_20_clients(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i in range(10):  # warm up: allocator pools, thread pool, tokenizer caches
            assert c.post("/api/runs", json={"text": load_text(1000 + i)}).status_code == 201
        rss_before = server.rss_kb()
        one_run = c.get("/api/health").json()["bytes"] / MAX_RUNS

    failures: list[str] = []
    health: list[tuple[float, int]] = []  # (seconds, status)
    done = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for j in range(PER_CLIENT):
                i = n * PER_CLIENT + j
                try:
                    r = c.post("/api/runs", json={"text": load_text(i)})
                    if r.status_code != 201:
                        failures.append(f"{i}: {r.status_code} {r.text[:200]}")
                    elif r.json()["text"] != load_text(i):
                        failures.append(f"{i}: answered with another run's text")
                except httpx.HTTPError as exc:
                    failures.append(f"{i}: {type(exc).__name__} {exc}")

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    status = c.get("/api/health").status_code
                except httpx.HTTPError:
                    status = 0
                health.append((time.perf_counter() - t0, status))
                time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 300 - (time.perf_counter() - t0)))
    done.set()
    poller.join(timeout=15)
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
    elapsed = time.perf_counter() - t0

    assert failures == []
    assert len(health) >= 5, f"health polled only {len(health)} times in {elapsed:.1f}s"
    assert all(status == 200 for _, status in health), health
    worst = max(s for s, _ in health)
    assert worst < 2.0, f"/api/health took {worst:.2f}s during the load"

    with httpx.Client(base_url=server.url, timeout=30) as c:
        h = c.get("/api/health").json()
        assert h["runs"] == MAX_RUNS
        assert h["evicted"] == 10 + CLIENTS * PER_CLIENT - MAX_RUNS
        assert h["bytes"] <= 2 * MAX_RUNS * one_run
        assert len(c.get("/api/runs").json()) == MAX_RUNS
    grown_mb = (server.rss_kb() - rss_before) / 1024
    kept_mb = CLIENTS * PER_CLIENT * one_run / 2**20
    print(f"\n200 runs in {elapsed:.1f}s, health worst {worst * 1000:.0f} ms over "
          f"{len(health)} polls, RSS grew {grown_mb:.0f} MB (all runs would be {kept_mb:.0f} MB)")
    # Keeping every run would grow the process by kept_mb; the LRU keeps 5 of them.
    assert grown_mb < kept_mb / 3, f"RSS grew {grown_mb:.0f} MB; runs are not being released"


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
def test_fuzz_api_never_5xx(server, body, raw, path):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        content = raw if raw is not None else _dumps(body)
        r = c.post("/api/runs", content=content, headers={"content-type": "application/json"})
        assert r.status_code < 500, r.text
        assert r.status_code in (201, 400, 413, 422), r.text
        if r.status_code != 201:
            assert isinstance(r.json()["detail"], str)
        p = quote(path, safe="")  # any string, percent-encoded as a browser would
        for url in (f"/api/runs/{p}", f"/api/runs/{p}/layers/self/{p}", f"/api/runs/{p}/payload"):
            r = c.get(url)
            assert r.status_code < 500, (url, r.text)
