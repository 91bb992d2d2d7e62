"""The work done off the event loop: the models a server runs, and its job runner.

Each model forward runs in a worker thread (the event loop keeps answering), one at a time per
model (models are not reentrant), and a request whose work takes longer than ``timeout``
answers 504; its thread then skips the forward if it has not started it yet.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio

from .._errors import AttnmapError
from ._errors import ApiError, quote
from ._store import MB, RunStore

WORKERS = 8  # threads doing requests' work at once (forwards wait on their model's lock)


class Model:
    """One model named at start-up, loaded once, used by one forward at a time."""

    def __init__(self, name: str | None, ident: str, *, trust_remote_code: bool,
                 device: str | None = "auto", torch_dtype: str | None = "auto") -> None:
        self.name = name  # what was given to create_app (path, hub id, or None → default)
        self.id = ident
        self.trust_remote_code = trust_remote_code
        self.device, self.torch_dtype = device, torch_dtype
        self.forward_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.loaded: Any = None

    def get(self) -> Any:
        with self._load_lock:
            if self.loaded is None:
                from ..capturing import get_model

                self.loaded = get_model(self.name, trust_remote_code=self.trust_remote_code,
                                        device=self.device, torch_dtype=self.torch_dtype)
        return self.loaded

    def load(self) -> Any:
        """`get`, with a load failure answered as 503."""
        try:
            return self.get()
        except AttnmapError as exc:
            raise ApiError(503, f"model {self.id!r} could not be loaded: {exc}") from None

    def facts(self) -> dict[str, Any]:
        label = os.path.basename(self.id.rstrip("/\\")) or self.id
        out: dict[str, Any] = {"id": self.id, "label": label, "loaded": self.loaded is not None}
        if self.loaded is not None:
            info = self.loaded.info
            for k in ("architecture", "model_type", "layers", "heads", "causal", "max_length"):
                out[k] = info.get(k)
            out["mask_token"] = self.mask_token()
        return out

    def mask_token(self) -> str | None:
        """The tokenizer's mask token (what perturb's mode 'mask' puts in), if loaded and any."""
        if self.loaded is None:
            return None
        return getattr(self.loaded.tokenizer, "mask_token", None) or None


class Job:
    """A request's deadline, and whether it gave up waiting (then its thread skips the work)."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.abandoned = False

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def check_text(text: str, what: str) -> str:
    """`text` if a model may read it, else `ApiError` 400 (empty, NUL, lone surrogates)."""
    from ..capturing import check_text as check

    try:
        check(text, what)
        text.encode("utf-8")
    except AttnmapError as exc:
        raise ApiError(400, str(exc)) from None
    except UnicodeEncodeError as exc:
        raise ApiError(
            400, f"{what} holds an unpaired surrogate (\\u{ord(text[exc.start]):04x}) at "
            f"position {exc.start}; send valid Unicode"
        ) from None
    return text


class Runner:
    """The server's models, its run store, and the worker threads their work runs in."""

    def __init__(self, models: list[Model], store: RunStore, timeout: float) -> None:
        self.models = models
        self.by_id = {m.id: m for m in models}
        self.store = store
        self.timeout = timeout
        self.cmap = "Blues"  # the viewer's colormap (set by create_app)
        self.limiter = anyio.CapacityLimiter(WORKERS)
        self.max_new_tokens = 256  # per generation request (set by create_app)
        self.generations: dict[str, Any] = {}  # model id → its running generation
        self.generations_lock = threading.Lock()

    def pick(self, name: str | None) -> Model:
        if name is None:
            return self.models[0]
        m = self.by_id.get(name)
        if m is None:
            raise ApiError(
                400,
                f"model {quote(name)} is not one of this server's models "
                f"({', '.join(self.by_id)}); start `attnmap serve --model NAME` to use another",
            )
        return m

    def model_of(self, run: Any) -> Model:
        """The model that made `run` (the first one if it is not this server's)."""
        return self.by_id.get(run.model.get("id")) or self.models[0]

    async def work(self, fn: Callable[[Job], Any], what: str) -> Any:
        """`fn(job)` in a worker thread, or `ApiError` 504 once it takes too long."""
        job = Job(self.timeout)
        try:
            with anyio.fail_after(self.timeout):
                return await anyio.to_thread.run_sync(
                    fn, job, abandon_on_cancel=True, limiter=self.limiter
                )
        except TimeoutError:
            job.abandoned = True
            raise ApiError(
                504,
                f"{what} took longer than this server's limit of {self.timeout:g} s; try a "
                "shorter text, or start the server with a larger --timeout",
            ) from None

    def capture(self, m: Model, text: str, target: str | None, job: Job) -> Any:
        """In a worker thread: ``(run, seconds)`` of `m` on `text`, one forward per model."""
        loaded = m.load()
        if not m.forward_lock.acquire(timeout=job.left()):
            raise ApiError(503, f"model {m.id!r} is busy with other runs; try again shortly")
        try:
            if job.abandoned:
                return None
            self._check_size(loaded, text)
            from ..capturing import capture

            t0 = time.perf_counter()
            try:
                run = capture(text, loaded, target=target)
            except AttnmapError as exc:
                raise ApiError(400, str(exc)) from None
            return run, time.perf_counter() - t0
        finally:
            m.forward_lock.release()

    def _check_size(self, loaded: Any, text: str) -> None:
        info = loaded.info
        n = len(loaded.tokenizer(text, add_special_tokens=True)["input_ids"])
        limit = info.get("max_length")
        if limit and n > limit:
            raise ApiError(
                400,
                f"text is {n} tokens, longer than the maximum of {limit} tokens for model "
                f"{info['id']!r}; shorten it",
            )
        # float32 [layer, head, n, n]: refuse before the forward allocates it
        need = (info.get("layers") or 1) * (info.get("heads") or 1) * n * n * 4
        if need > self.store.max_bytes:
            raise ApiError(
                413,
                f"a run of {n} tokens on {info['id']!r} needs {need / MB:.0f} MB, more than "
                f"this server keeps ({self.store.max_bytes / MB:g} MB); shorten the text or "
                "start the server with a larger --max-mb",
            )
