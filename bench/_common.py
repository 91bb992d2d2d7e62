"""Shared bench helpers: texts of a given token length, timing, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PARAGRAPH = (
    "The cat that sat on the mat was black, and the dog that slept by the door was brown. "
    "When Mary and John went to the store, John gave a drink to Mary because she was "
    "thirsty after the long walk through the park in the afternoon sun. "
)


def text_of_tokens(tokenizer, n: int) -> str:
    """A natural-looking text that the tokenizer turns into exactly `n` tokens (specials
    included), found by cutting words off a long repetition."""
    words = (PARAGRAPH * (n // 10 + 5)).split()
    lo, hi = 1, len(words)
    while lo < hi:  # largest prefix with at most n tokens
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= n:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def median_time(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_process(args: list[str], repeat: int = 3, env: dict | None = None) -> float:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}

    def once() -> None:
        subprocess.run(args, check=True, capture_output=True, env=full_env)

    return median_time(once, repeat)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
