"""Work spread over the machine's cores on threads (numpy, BLAS and zlib release the GIL)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`fn` over `items` on up to one thread per core, results in order.

    Each thread's matrix products run on one BLAS thread: OpenBLAS's own threads would fight
    ours (and, on a busy machine, spin while they wait).
    """
    todo = list(items)
    workers = min(len(todo), os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1, "blas")
    with limits:
        if workers <= 1:
            return [fn(x) for x in todo]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, todo))
