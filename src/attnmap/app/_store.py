"""Recent runs kept in memory: an LRU bounded by count and by bytes.

Ids carry a per-server prefix, so an id from an earlier server is told apart from one this
server evicted, and each answers a 404 that says which.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ._errors import ApiError, quote

MB = 1024 * 1024


@dataclass
class Entry:
    id: str
    run: Any  # AttentionRun
    nbytes: int
    created: float
    seconds: float


def run_bytes(run: Any) -> int:
    """The bytes a run's attention and masks hold."""
    total = 0
    for st in run.stacks.values():
        total += sum(int(a.nbytes) for a in st.layers)
        total += sum(int(m.nbytes) for m in st.distinct_masks()[0])  # each distinct layer mask
    return total


class RunStore:
    """Recent runs, least recently used evicted first, bounded by count and by bytes."""

    def __init__(self, max_runs: int, max_bytes: int) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.prefix = secrets.token_hex(3)
        self._next = itertools.count(1)
        self._issued = 0
        self._runs: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: Any, seconds: float) -> Entry:
        with self._lock:
            n = next(self._next)
            self._issued = n
            entry = Entry(f"{self.prefix}-{n}", run, run_bytes(run), time.time(), seconds)
            self._runs[entry.id] = entry
            self.bytes += entry.nbytes
            # The newest run always stays, even alone over max_bytes: it was just answered.
            while len(self._runs) > 1 and (
                len(self._runs) > self.max_runs or self.bytes > self.max_bytes
            ):
                _, old = self._runs.popitem(last=False)
                self.bytes -= old.nbytes
                self.evicted += 1
            return entry

    def get(self, run_id: str) -> Entry:
        """The run `run_id` (now the most recently used), or `ApiError` 404 saying why not."""
        with self._lock:
            entry = self._runs.get(run_id)
            if entry is not None:
                self._runs.move_to_end(run_id)
                return entry
            head, _, num = run_id.partition("-")
            # ASCII digits only, and few: int() refuses "²" and 5,000-digit strings
            issued = num.isascii() and num.isdigit() and len(num) < 19
            if head == self.prefix and issued and 0 < int(num) <= self._issued:
                raise ApiError(
                    404,
                    f"run {quote(run_id)} was evicted: this server keeps the "
                    f"{self.max_runs} most recent runs (at most {self.max_bytes / MB:g} MB); "
                    "make the run again",
                )
            raise ApiError(
                404,
                f"no run {quote(run_id)} on this server (runs live in memory until the server "
                "stops); GET /api/runs lists the runs it has",
            )

    def entries(self) -> list[Entry]:
        """The kept runs, newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))
