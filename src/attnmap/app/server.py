"""The app's HTTP side: a FastAPI application around a few loaded models and recent runs.

Hardening, because a local server is still reachable by every process (and every web page's
JavaScript, through DNS rebinding) on the machine:

* only the models named at start-up run; a request can name one of them, never a path, a
  hub id or remote code;
* the Host header must be one the server was bound to (loopback by default);
* request bodies are bounded (413) and must arrive within ``body_timeout`` seconds (408),
  texts by the model's maximum in tokens (400) and by the memory one run would take (413);
* runs are kept in an LRU bounded by count and bytes; an evicted run answers 404 saying so;
* each model forward runs in a worker thread (the event loop keeps answering), one at a time
  per model, and a request that takes longer than ``timeout`` answers 504.

Every error is JSON ``{"detail": message}``, and ``/openapi.json`` declares every status and
body each route answers. The pieces, one concern each: ``_schemas`` (request and response
bodies), ``_store`` (the runs kept), ``_jobs`` (models and the worker threads), ``_guard``
(Host, body limit, security headers), ``_errors`` (error answers), and the routes in
``_pages``, ``_runs``, ``_diff`` and ``_generate`` (live generation, streamed);
`create_app` assembles them.
"""

from __future__ import annotations

from fastapi import FastAPI

from .._errors import AttnmapError
from ..analysis.perturb import perturbed_text
from . import _diff, _errors, _generate, _pages, _runs, _tiles
from ._errors import ApiError
from ._guard import CSP, Guard, Methods, SecurityHeaders, allowed_hosts
from ._jobs import Model, Runner
from ._schemas import PerturbRequest, RunRequest
from ._store import MB, RunStore

__all__ = ["CSP", "MB", "ApiError", "PerturbRequest", "RunRequest", "RunStore", "create_app",
           "perturbed_text"]


def create_app(
    models: list[str | None] | None = None,
    *,
    max_runs: int = 32,
    max_bytes: int = 1024 * MB,
    max_body: int = 1 * MB,
    timeout: float = 120.0,
    body_timeout: float = 30.0,
    preload: bool = True,
    trust_remote_code: bool = False,
    host: str = "127.0.0.1",
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    cmap: str = "Blues",
    max_new_tokens: int = 256,
) -> FastAPI:
    """The app for `models` (hub ids, local directories, None for the bundled model).

    Only these models can be used. `preload` loads them now (errors surface at start-up);
    otherwise each loads on first use. `max_runs`/`max_bytes` bound the runs kept,
    `max_body` request bodies, `timeout` (seconds) each request's work, `body_timeout`
    (seconds) how long a request body may take to arrive (then 408); `host` is the
    address served (its name is accepted in the Host header besides loopback);
    `device`/`torch_dtype` where and in what precision the models run (as in capture);
    `cmap` is the matplotlib colormap the viewer paints with; `max_new_tokens` the most
    tokens one live generation (``POST /api/generate``) may ask for.
    """
    from ..models import resolve
    from ..viewer.colours import check_cmap

    check_cmap(cmap)

    if max_runs < 1:
        raise AttnmapError(f"max_runs must be at least 1 (not {max_runs!r})")
    if max_bytes < 1 or max_body < 1 or not timeout > 0 or not body_timeout > 0:
        raise AttnmapError("max_bytes, max_body, timeout and body_timeout must be positive")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise AttnmapError(f"max_new_tokens must be at least 1 (not {max_new_tokens!r})")
    registry: dict[str, Model] = {}
    for name in models or [None]:
        ident = resolve(name)[0]
        if ident not in registry:
            registry[ident] = Model(
                None if name is None else str(name), ident, trust_remote_code=trust_remote_code,
                device=device, torch_dtype=torch_dtype,
            )
    runner = Runner(list(registry.values()), RunStore(max_runs, max_bytes), timeout)
    if preload:
        for m in runner.models:
            m.get()

    app = FastAPI(
        title="attnmap",
        summary="See where a transformer's attention goes: runs, tokens and attention layers.",
        docs_url=None,  # the interactive docs load scripts from a CDN; no network at view time
        redoc_url=None,
    )
    runner.cmap = cmap
    runner.max_new_tokens = max_new_tokens
    app.state.attnmap = runner
    app.state.attnmap_alignments = _diff.AlignmentCache()
    # The last added runs first: security headers go on the guard's own refusals too.
    app.add_middleware(Methods, routes=lambda: app.router.routes)
    app.add_middleware(Guard, hosts=allowed_hosts(host), max_body=max_body,
                       body_timeout=body_timeout)
    app.add_middleware(SecurityHeaders)
    _errors.install(app)
    app.include_router(_pages.router)
    app.include_router(_runs.router)
    app.include_router(_diff.router)
    app.include_router(_generate.router)
    app.include_router(_tiles.router)
    return app
