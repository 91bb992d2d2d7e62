"""`attnmap serve` under load: time, /api/health latency and memory while 20 clients make 200
runs, on a real server process (loopback) with a tiny 4-layer GPT-2 built on the spot.

    python bench/bench_app_load.py [--clients 20] [--per-client 10] [--max-runs 5]

Prints the numbers; asserts nothing (the correctness of the same load is tested in
tests/integration/test_app_load.py). The runs are large enough (~1.5–3.7 MB each) that
keeping all of them would show in the process's memory; the LRU keeps --max-runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import _models  # noqa: E402
from _server import start  # noqa: E402


def load_text(i: int) -> str:
    """~150–240 tokens: each run holds 4 layers × 4 heads × n² float32."""
    sentences = _models.CORPUS[:5]
    return " ".join(sentences[(i + j) % 5] for j in range(11 + i % 6)) + f" Run {i}."


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--max-runs", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = _models.build_gpt2(Path(tmp) / "gpt2", layers=4, heads=4, n_positions=256)
        server = start("--model", str(model), "--max-runs", str(args.max_runs))
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                for i in range(10):  # warm up: allocator pools, thread pool, tokenizer caches
                    c.post("/api/runs", json={"text": load_text(1000 + i)}).raise_for_status()
                rss_before = server.rss_kb()
                one_run = c.get("/api/health").json()["bytes"] / args.max_runs

            statuses: list[int] = []
            health: list[float] = []
            done = threading.Event()

            def client(n: int) -> None:
                with httpx.Client(base_url=server.url, timeout=120) as c:
                    for j in range(args.per_client):
                        try:
                            r = c.post("/api/runs",
                                       json={"text": load_text(n * args.per_client + j)})
                            statuses.append(r.status_code)
                        except httpx.HTTPError:
                            statuses.append(0)

            def poll() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    while not done.is_set():
                        t0 = time.perf_counter()
                        c.get("/api/health")
                        health.append(time.perf_counter() - t0)
                        done.wait(0.1)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            done.set()
            poller.join()
            grown_mb = (server.rss_kb() - rss_before) / 1024
        finally:
            server.stop()

    n = args.clients * args.per_client
    ok = sum(s == 201 for s in statuses)
    health.sort()
    print(f"{n} runs from {args.clients} clients in {elapsed:.1f} s "
          f"({n / elapsed:.1f} runs/s), {ok} answered 201, {n - ok} other")
    print(f"/api/health during the load: median {health[len(health) // 2] * 1000:.0f} ms, "
          f"worst {health[-1] * 1000:.0f} ms over {len(health)} polls")
    print(f"server RSS grew {grown_mb:.0f} MB; keeping all {n} runs would take "
          f"{n * one_run / 2**20:.0f} MB (the LRU keeps {args.max_runs})")


if __name__ == "__main__":
    main()
