"""Live generation: the model writes on a prompt and each step reaches the page as it is made.

``POST /api/generate`` answers ``text/event-stream`` (Server-Sent Events): one ``token`` event
per decoding step, in order, then ``done`` with the stored run (kept like any other run, so
diff, perturb and download work on it) or ``error`` with one line. Bounds:

* ``max_new_tokens`` per request is capped by the server (``create_app(max_new_tokens=…)``);
* one generation per model at a time: a second request for the same model answers 409;
* the generation ends early (and is still stored, with what was written) when the client
  disconnects, when ``POST /api/generate/stop`` asks for it, or after the server's timeout.

The generation runs in its own thread, under the model's forward lock (a run on the same model
waits for it); the thread hands each step to the event loop, which writes it out.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .._errors import AttnmapError
from ._deps import RunnerDep
from ._errors import ApiError
from ._jobs import Model, Runner, check_text
from ._schemas import EVENT_STREAM, GenerateRequest, StopRequest, StopResult, errors

router = APIRouter(prefix="/api")

POLL = 0.25  # seconds between checks that the client is still there while a step is made


class Generation:
    """The one running generation of a model: asked to stop through `stop`."""

    def __init__(self, deadline: float) -> None:
        self.stop = threading.Event()
        self.deadline = deadline

    def should_stop(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.deadline


def _claim(runner: Runner, m: Model) -> Generation:
    with runner.generations_lock:
        if m.id in runner.generations:
            raise ApiError(409, f"model {m.id!r} is already generating (one generation per "
                           "model at a time); stop it (POST /api/generate/stop) or wait for it "
                           "to finish")
        gen = runner.generations[m.id] = Generation(time.monotonic() + runner.timeout)
    return gen


def _release(runner: Runner, m: Model, gen: Generation) -> None:
    with runner.generations_lock:
        if runner.generations.get(m.id) is gen:
            del runner.generations[m.id]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=True)}\n\n".encode()


def _options(req: GenerateRequest, cap: int) -> dict[str, Any]:
    """The request's generation settings, checked before the stream starts (400)."""
    from ..generating import _check_options

    if isinstance(req.max_new_tokens, int) and req.max_new_tokens > cap:
        raise ApiError(400, f"max_new_tokens {req.max_new_tokens} is above this server's "
                       f"limit of {cap}; ask for fewer, or start the server with a larger "
                       "max_new_tokens")
    opts: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "do_sample": req.do_sample,
            "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
            "stop": req.stop}
    try:
        _check_options(top_k=5, store="auto", **opts)
    except AttnmapError as exc:
        raise ApiError(400, str(exc)) from None
    return opts


def _prompt(req: GenerateRequest) -> str | list[dict[str, str]]:
    if (req.text is None) == (req.messages is None):
        raise ApiError(400, "give the prompt as text or as messages (one of the two)")
    if req.text is not None:
        return check_text(req.text, "text")
    from .._chat import check_messages

    assert req.messages is not None
    try:
        messages = check_messages([m.model_dump() for m in req.messages])
    except AttnmapError as exc:
        raise ApiError(400, str(exc)) from None
    for i, msg in enumerate(messages):
        if msg["content"]:
            check_text(msg["content"], f"chat message {i}")
    return messages


@router.post(
    "/generate",
    summary="Let a model write on a prompt; each step streams as a Server-Sent Event",
    response_class=StreamingResponse,
    responses={200: EVENT_STREAM, **errors(408, 409, 413, 422, binary=True)},
)
async def generate(req: GenerateRequest, request: Request, runner: RunnerDep
                   ) -> StreamingResponse:
    m = runner.pick(req.model)
    prompt = _prompt(req)
    opts = _options(req, runner.max_new_tokens)
    gen = _claim(runner, m)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def post(name: str, data: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (name, data))

    def work() -> None:
        from ..generating import generate as make

        try:
            try:
                loaded = m.load()
                if not m.forward_lock.acquire(timeout=max(0.0, gen.deadline - time.monotonic())):
                    raise ApiError(503, f"model {m.id!r} is busy with other runs; try again "
                                   "shortly")
                try:
                    t0 = time.perf_counter()
                    run = make(prompt, loaded, **opts,
                               on_token=lambda i, t: post("token", {"step": i, "token": t}),
                               should_stop=gen.should_stop)
                    seconds = time.perf_counter() - t0
                finally:
                    m.forward_lock.release()
            finally:
                _release(runner, m, gen)
            entry = runner.store.add(run, seconds)
            from ._runs import summary

            settings = run.extra["generation"]
            post("done", dict(summary(entry), generated=settings["generated_tokens"],
                              stopped=settings["stopped"], seconds=round(seconds, 4)))
        except (ApiError, AttnmapError) as exc:
            post("error", {"detail": str(exc).splitlines()[0] if str(exc) else "failed"})
        except Exception as exc:  # the stream is open: say it there, and in the server's log
            import sys
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            post("error", {"detail": f"internal error ({type(exc).__name__}); see the "
                           "server's output"})

    async def events() -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    name, data = await asyncio.wait_for(queue.get(), POLL)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                yield _event(name, data)
                if name in ("done", "error"):
                    return
        finally:  # the client left (or the stream ended): the generation stops at its next step
            gen.stop.set()

    threading.Thread(target=work, name=f"attnmap-generate-{m.id}", daemon=True).start()
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


@router.post("/generate/stop", summary="Stop a model's running generation",
             response_model=StopResult, responses=errors(408, 413, 422))
async def stop(req: StopRequest, runner: RunnerDep) -> dict[str, Any]:
    m = runner.pick(req.model)
    with runner.generations_lock:
        gen = runner.generations.get(m.id)
    if gen is not None:
        gen.stop.set()
    return {"model": m.id, "stopped": gen is not None}
