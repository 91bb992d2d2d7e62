"""The app's HTTP side: a FastAPI application around a few loaded models and recent runs.

Hardening, because a local server is still reachable by every process (and every web page's
JavaScript, through DNS rebinding) on the machine:

* only the models named at start-up run; a request can name one of them, never a path, a
  hub id or remote code;
* the Host header must be one the server was bound to (loopback by default);
* request bodies are bounded (413), texts by the model's maximum in tokens (400) and by the
  memory one run would take (413);
* runs are kept in an LRU bounded by count and bytes; an evicted run answers 404 saying so;
* each model forward runs in a worker thread (the event loop keeps answering), one at a time
  per model, and a request that takes longer than ``timeout`` answers 504.

Every error is JSON ``{"detail": message}``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .._errors import AttnmapError
from . import _diff

MB = 1024 * 1024
STATIC = Path(__file__).parent / "static"
VIEWER_STATIC = Path(__file__).parent.parent / "viewer" / "static"
APP_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
VIEWER_FILES = {"viewer.js": APP_FILES["app.js"], "viewer.css": APP_FILES["app.css"]}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_HOST = ("0.0.0.0", "::", "")
# Scripts only from this server, so a token that is markup can never run even if some view
# put it into HTML; styles may be set inline by the viewer.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)


class ApiError(Exception):
    """An error answered as JSON ``{"detail": detail}`` with a 4xx/5xx status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _quote(value: str, limit: int = 60) -> str:
    """A user's value quoted in a message, cut so that a huge value is not echoed back."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


class RunRequest(BaseModel):
    """``POST /api/runs``: the text to look at and which of the server's models reads it."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the input text (non-empty, no NUL bytes)")
    model: str | None = Field(
        None, description="one of the ids from GET /api/models; default the first one"
    )
    target: str | None = Field(
        None, description="encoder-decoder models: the decoder's text (default: its own "
        "greedy continuation)"
    )
    trust_remote_code: bool = Field(
        False, description="always refused: a request can never make the server run a "
        "model's own code"
    )


# --- models ------------------------------------------------------------------------------------
class PerturbRequest(BaseModel):
    """Run a stored run's text again with one token removed or masked."""

    model_config = ConfigDict(extra="forbid")
    position: int = Field(ge=0, description="the input token to change (0-based)")
    mode: str = Field("remove", pattern="^(remove|mask)$",
                      description="'remove' the token, or 'mask' it with the mask token")


def perturbed_text(run: Any, position: int, mode: str, mask_token: str | None) -> str:
    """`run.text` with the token at `position` cut out (or replaced by `mask_token`)."""
    toks = run.tokens
    if position >= len(toks):
        raise ApiError(400, f"position must be in 0..{len(toks) - 1} (not {position})")
    t = toks[position]
    if t.special or t.start is None or t.end is None:
        raise ApiError(400, f"token {position} ({_quote(t.text, 20)}) is a special token with "
                       "no place in the text; pick a token of the text")
    if mode == "mask":
        if not mask_token:
            raise ApiError(400, "this model's tokenizer has no mask token; use mode 'remove'")
        return run.text[: t.start] + mask_token + run.text[t.end :]
    start = t.start
    # Offsets of word-initial tokens often leave out the space before the word (GPT-2's " mat"
    # spans "mat"); cutting only those characters would leave a doubled space that reads as a
    # new token. Take the space before with it when the token ends at a space or the end.
    if start > 0 and run.text[start - 1].isspace() and (
        t.end == len(run.text) or run.text[t.end].isspace()
    ):
        start -= 1
    text = run.text[:start] + run.text[t.end :]
    if not text.strip():
        raise ApiError(400, "removing that token leaves no text; pick another token")
    return text


class _Model:
    """One model named at start-up, loaded once, used by one forward at a time."""

    def __init__(self, name: str, ident: str, *, trust_remote_code: bool) -> None:
        self.name = name  # what was given to create_app (path, hub id, or None → default)
        self.id = ident
        self.trust_remote_code = trust_remote_code
        self.forward_lock = threading.Lock()  # one forward at a time: models are not reentrant
        self._load_lock = threading.Lock()
        self.loaded: Any = None

    def get(self) -> Any:
        with self._load_lock:
            if self.loaded is None:
                from ..capture import get_model

                self.loaded = get_model(self.name, trust_remote_code=self.trust_remote_code)
        return self.loaded

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


# --- runs --------------------------------------------------------------------------------------
@dataclass
class _Entry:
    id: str
    run: Any  # AttentionRun
    nbytes: int
    created: float
    seconds: float


def _run_bytes(run: Any) -> int:
    total = 0
    for st in run.stacks.values():
        total += sum(int(a.nbytes) for a in st.layers) + int(st.masked.nbytes)
    return total


class RunStore:
    """Recent runs, least recently used evicted first, bounded by count and by bytes."""

    def __init__(self, max_runs: int, max_bytes: int) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        # Ids carry a per-server prefix, so an id from an earlier server is told apart from
        # one this server evicted.
        self.prefix = secrets.token_hex(3)
        self._next = itertools.count(1)
        self._issued = 0
        self._runs: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: Any, seconds: float) -> _Entry:
        with self._lock:
            n = next(self._next)
            self._issued = n
            entry = _Entry(f"{self.prefix}-{n}", run, _run_bytes(run), time.time(), seconds)
            self._runs[entry.id] = entry
            self.bytes += entry.nbytes
            while len(self._runs) > 1 and (
                len(self._runs) > self.max_runs or self.bytes > self.max_bytes
            ):
                _, old = self._runs.popitem(last=False)
                self.bytes -= old.nbytes
                self.evicted += 1
            return entry

    def get(self, run_id: str) -> _Entry:
        with self._lock:
            entry = self._runs.get(run_id)
            if entry is not None:
                self._runs.move_to_end(run_id)
                return entry
            head, _, num = run_id.partition("-")
            if head == self.prefix and num.isdigit() and 0 < int(num) <= self._issued:
                raise ApiError(
                    404,
                    f"run {_quote(run_id)} was evicted: this server keeps the "
                    f"{self.max_runs} most recent runs (at most {self.max_bytes / MB:g} MB); "
                    "make the run again",
                )
            raise ApiError(
                404,
                f"no run {_quote(run_id)} on this server (runs live in memory until the server "
                "stops); GET /api/runs lists the runs it has",
            )

    def entries(self) -> list[_Entry]:
        with self._lock:
            return list(reversed(self._runs.values()))


def _summary(e: _Entry) -> dict[str, Any]:
    text = e.run.text
    return {
        "id": e.id,
        "model": e.run.model.get("id"),
        "n_tokens": len(e.run.tokens),
        "preview": text if len(text) <= 80 else text[:80] + "…",
        "created": e.created,
    }


def _facts(e: _Entry) -> dict[str, Any]:
    run = e.run
    out = _summary(e)
    out.update(
        text=run.text,
        tokens=[t.text for t in run.tokens],
        special=[bool(t.special) for t in run.tokens],
        stacks=list(run.stacks),
        # per stack [layer, head, query, key]
        shape={name: list(st.shape) for name, st in run.stacks.items()},
        causal=run.causal,
        architecture=run.model.get("architecture"),
        bytes=e.nbytes,
        seconds=round(e.seconds, 4),
    )
    if run.target_tokens is not None:
        out["target_text"] = run.target_text
        out["target_tokens"] = [t.text for t in run.target_tokens]
    return out


def _check_text(text: str, what: str) -> str:
    from ..capture import check_text

    try:
        check_text(text, what)
        text.encode("utf-8")
    except AttnmapError as exc:
        raise ApiError(400, str(exc)) from None
    except UnicodeEncodeError as exc:
        raise ApiError(
            400, f"{what} holds an unpaired surrogate (\\u{ord(text[exc.start]):04x}) at "
            f"position {exc.start}; send valid Unicode"
        ) from None
    return text


# --- the work done off the event loop ---------------------------------------------------------
class _Job:
    """A request's deadline, and whether it gave up waiting (then its thread skips the work)."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.abandoned = False

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


class _State:
    def __init__(self, models: list[_Model], store: RunStore, timeout: float) -> None:
        self.models = models
        self.by_id = {m.id: m for m in models}
        self.store = store
        self.timeout = timeout
        self.limiter = anyio.CapacityLimiter(8)

    def pick(self, name: str | None) -> _Model:
        if name is None:
            return self.models[0]
        m = self.by_id.get(name)
        if m is None:
            raise ApiError(
                400,
                f"model {_quote(name)} is not one of this server's models "
                f"({', '.join(self.by_id)}); start `attnmap serve --model NAME` to use another",
            )
        return m

    async def work(self, fn: Callable[[_Job], Any], what: str) -> Any:
        job = _Job(self.timeout)
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

    def capture(self, m: _Model, text: str, target: str | None, job: _Job) -> Any:
        try:
            loaded = m.get()
        except AttnmapError as exc:
            raise ApiError(503, f"model {m.id!r} could not be loaded: {exc}") from None
        if not m.forward_lock.acquire(timeout=job.left()):
            raise ApiError(503, f"model {m.id!r} is busy with other runs; try again shortly")
        try:
            if job.abandoned:
                return None
            self._check_size(loaded, text)
            from ..capture import capture

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


# --- the application ---------------------------------------------------------------------------
class _Guard:
    """ASGI middleware: Host header check (DNS rebinding) and a bound on request bodies."""

    def __init__(self, app: Any, *, hosts: set[str] | None, max_body: int) -> None:
        self.app = app
        self.hosts = hosts  # None: any Host (the server listens on every interface)
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if self.hosts is not None and name not in self.hosts:
            await _send_json(send, 400, f"Host {_quote(host)} is not served here; open the "
                             "app at the address `attnmap serve` printed")
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        too_big = f"request body is larger than this server's limit of {self.max_body:,} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _drain(receive, 64 * self.max_body)
            await _send_json(send, 413, too_big)
            return
        body, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            more = msg.get("more_body", False)
            if size > self.max_body:
                if more:
                    await _drain(receive, 64 * self.max_body)
                await _send_json(send, 413, too_big)
                return
            body.append(chunk)
        data = b"".join(body)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive: Any, limit: int) -> None:
    """Read and drop a refused body, so the client reads our answer instead of a reset."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return
        seen += len(msg.get("body", b""))


async def _send_json(send: Any, status: int, detail: str) -> None:
    resp = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
    await resp({"type": "http"}, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}


def _payload_module() -> Any:
    try:
        from ..viewer import payload
    except ImportError as exc:
        raise ApiError(503, f"the viewer's payload module is not available ({exc})") from None
    return payload


def _file(path: Path, media_type: str) -> Response:
    if not path.is_file():
        return JSONResponse({"detail": f"{path.name} is not installed with attnmap"}, 404)
    return FileResponse(path, media_type=media_type, headers={"cache-control": "no-cache"})


def create_app(
    models: list[str | None] | None = None,
    *,
    max_runs: int = 32,
    max_bytes: int = 1024 * MB,
    max_body: int = 1 * MB,
    timeout: float = 120.0,
    preload: bool = True,
    trust_remote_code: bool = False,
    host: str = "127.0.0.1",
    cmap: str = "Blues",
) -> FastAPI:
    """The app for `models` (hub ids, local directories, None for the bundled model).

    Only these models can be used. `preload` loads them now (errors surface at start-up);
    otherwise each loads on first use. `max_runs`/`max_bytes` bound the runs kept,
    `max_body` request bodies, `timeout` (seconds) each request's work; `host` is the
    address served (its name is accepted in the Host header besides loopback); `cmap` is the
    matplotlib colormap the viewer paints with.
    """
    from ..models import resolve
    from ..viewer.colours import check_cmap

    check_cmap(cmap)

    if max_runs < 1:
        raise AttnmapError(f"max_runs must be at least 1 (not {max_runs!r})")
    if max_bytes < 1 or max_body < 1 or not timeout > 0:
        raise AttnmapError("max_bytes, max_body and timeout must be positive")
    registry: dict[str, _Model] = {}
    for name in models or [None]:
        ident = resolve(name)[0]
        if ident not in registry:
            registry[ident] = _Model(
                None if name is None else str(name), ident, trust_remote_code=trust_remote_code
            )
    state = _State(list(registry.values()), RunStore(max_runs, max_bytes), timeout)
    if preload:
        for m in state.models:
            m.get()

    app = FastAPI(
        title="attnmap",
        summary="See where a transformer's attention goes: runs, tokens and attention layers.",
        docs_url=None,  # the interactive docs load scripts from a CDN; no network at view time
        redoc_url=None,
    )
    app.state.attnmap = state
    alignments = _diff.AlignmentCache()
    hosts = None if host in ANY_HOST else {*LOOPBACK, host.strip("[]").lower()}
    app.add_middleware(_Guard, hosts=hosts, max_body=max_body)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("x-content-type-options", "nosniff")
        response.headers.setdefault("referrer-policy", "no-referrer")
        response.headers.setdefault("content-security-policy", CSP)
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in ctype:
            parts.insert(0, "send a JSON object with Content-Type: application/json")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the server's output"}, 500
        )

    # --- pages and static files ---
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _file(STATIC / "index.html", "text/html; charset=utf-8")

    @app.get("/app/{name}", include_in_schema=False)
    async def app_file(name: str) -> Response:
        if name not in APP_FILES:
            raise ApiError(404, f"no file {_quote(name)} under /app/")
        return _file(STATIC / name, APP_FILES[name])

    @app.get("/static/{name}", include_in_schema=False)
    async def viewer_file(name: str) -> Response:
        if name not in VIEWER_FILES:
            raise ApiError(404, f"no file {_quote(name)} under /static/")
        return _file(VIEWER_STATIC / name, VIEWER_FILES[name])

    def facts(e: _Entry) -> dict[str, Any]:
        out = _facts(e)
        m = state.by_id.get(e.run.model.get("id"))
        out["mask_token"] = m.mask_token() if m is not None else None
        return out

    # --- API ---
    @app.get("/api/health", summary="Server status")
    async def health() -> dict[str, Any]:
        st = state.store
        return {
            "status": "ok",
            "models": list(state.by_id),
            "runs": len(st),
            "bytes": st.bytes,
            "evicted": st.evicted,
            "max_runs": st.max_runs,
            "max_bytes": st.max_bytes,
        }

    @app.get("/api/models", summary="The models this server can run")
    async def list_models() -> list[dict[str, Any]]:
        return [m.facts() for m in state.models]

    @app.post("/api/runs", status_code=201, summary="Run a model on a text")
    async def create_run(req: RunRequest) -> dict[str, Any]:
        if req.trust_remote_code:
            raise ApiError(
                400, "trust_remote_code cannot be set by a request: the server runs only the "
                "models it was started with, with their library code"
            )
        m = state.pick(req.model)
        text = _check_text(req.text, "text")
        target = None if req.target is None else _check_text(req.target, "target")
        result = await state.work(lambda job: state.capture(m, text, target, job), "the run")
        run, seconds = result
        return facts(state.store.add(run, seconds))

    @app.post("/api/runs/{run_id}/perturb", status_code=201,
              summary="Run the text again with one token removed or masked; diff the two")
    async def perturb(run_id: str, req: PerturbRequest) -> dict[str, Any]:
        entry = state.store.get(run_id)
        run = entry.run
        m = state.by_id.get(run.model.get("id")) or state.models[0]

        def job_fn(job: _Job) -> Any:
            try:
                loaded = m.get()
            except AttnmapError as exc:
                raise ApiError(503, f"model {m.id!r} could not be loaded: {exc}") from None
            text = perturbed_text(run, req.position, req.mode,
                                  getattr(loaded.tokenizer, "mask_token", None))
            return text, state.capture(m, text, run.target_text, job)

        text, result = await state.work(job_fn, "the perturbed run")
        new, seconds = result
        new_entry = state.store.add(new, seconds)
        from ..diff import compare

        out: dict[str, Any] = {
            "original": run_id, "position": req.position, "mode": req.mode, "text": text,
            "run": facts(new_entry), "ranking": None, "aligned": None, "diff_error": None,
        }
        try:
            d = await state.work(lambda job: compare(run, new), "the diff")
            out["ranking"], out["aligned"] = d.ranking, int(len(d.ia))
            alignments.remember(run_id, new_entry.id, d)
        except AttnmapError as exc:
            out["diff_error"] = str(exc)
        return out

    @app.get("/api/runs", summary="The runs kept, newest first")
    async def list_runs() -> list[dict[str, Any]]:
        return [_summary(e) for e in state.store.entries()]

    @app.get("/api/runs/{run_id}", summary="One run's facts: text, tokens, shapes")
    async def get_run(run_id: str) -> dict[str, Any]:
        return facts(state.store.get(run_id))

    @app.get(
        "/api/runs/{run_id}/payload",
        summary="The run's viewer payload without layers (application/octet-stream)",
        response_class=Response,
    )
    async def get_payload(run_id: str) -> Response:
        entry = state.store.get(run_id)
        payload = _payload_module()
        data = await state.work(lambda job: payload.encode(entry.run, layers="none", cmap=cmap),
                                "encoding")
        return Response(data, media_type="application/octet-stream",
                        headers={"cache-control": "private, max-age=3600"})

    @app.get(
        "/api/runs/{run_id}/layers/{stack}/{layer}",
        summary="One layer of one stack, as the viewer's layer chunk (application/octet-stream)",
        response_class=Response,
    )
    async def get_layer(run_id: str, stack: str, layer: int) -> Response:
        entry = state.store.get(run_id)
        run = entry.run
        if stack not in run.stacks:
            raise ApiError(
                404, f"run {run_id} has no {_quote(stack, 20)} attention; it has: "
                f"{', '.join(run.stacks)}"
            )
        try:
            index = run.layer_index(layer, stack)
        except AttnmapError as exc:
            raise ApiError(404, f"{stack} {exc}") from None
        payload = _payload_module()

        data = await state.work(
            lambda job: payload.encode_layer(run, stack, index), "encoding the layer"
        )
        return Response(data, media_type="application/octet-stream",
                        headers={"cache-control": "private, max-age=3600"})

    _diff.register(app, state, alignments, ApiError)
    return app
