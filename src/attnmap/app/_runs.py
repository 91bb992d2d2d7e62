"""The runs API: server status, models, making runs (and perturbed runs), reading them back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .._errors import AttnmapError
from ._deps import AlignmentsDep, OctetStream, RunnerDep, payload_module
from ._errors import ApiError, quote
from ._jobs import Job, Runner, check_text
from ._schemas import (
    BINARY,
    Health,
    ModelFacts,
    PerturbRequest,
    PerturbResult,
    RunFacts,
    RunRequest,
    RunSummary,
    errors,
)
from ._store import Entry

router = APIRouter(prefix="/api")


def summary(e: Entry) -> dict[str, Any]:
    text = e.run.text
    return {
        "id": e.id,
        "model": e.run.model.get("id"),
        "n_tokens": len(e.run.tokens),
        "preview": text if len(text) <= 80 else text[:80] + "…",
        "created": e.created,
    }


def facts(runner: Runner, e: Entry) -> dict[str, Any]:
    run = e.run
    out = summary(e)
    out.update(
        text=run.text,
        tokens=[t.text for t in run.tokens],
        special=[bool(t.special) for t in run.tokens],
        stacks=list(run.stacks),
        # per stack [layer, head, query, key]
        shape={name: list(st.shape) for name, st in run.stacks.items()},
        causal=run.causal,
        architecture=run.model.get("architecture"),
        storage="qk" if any(st.lazy for st in run.stacks.values()) else "weights",
        bytes=e.nbytes,
        seconds=round(e.seconds, 4),
    )
    if run.target_tokens is not None:
        out["target_text"] = run.target_text
        out["target_tokens"] = [t.text for t in run.target_tokens]
    generated = sum(1 for t in (run.target_tokens or run.tokens) if t.generated)
    if generated:
        out["generated"] = generated
    m = runner.by_id.get(run.model.get("id"))
    out["mask_token"] = m.mask_token() if m is not None else None
    return out


@router.get("/health", summary="Server status", response_model=Health, responses=errors())
async def health(runner: RunnerDep) -> dict[str, Any]:
    st = runner.store
    return {
        "status": "ok",
        "models": list(runner.by_id),
        "runs": len(st),
        "bytes": st.bytes,
        "evicted": st.evicted,
        "max_runs": st.max_runs,
        "max_bytes": st.max_bytes,
    }


@router.get("/models", summary="The models this server can run",
            response_model=list[ModelFacts], response_model_exclude_unset=True,
            responses=errors())
async def list_models(runner: RunnerDep) -> list[dict[str, Any]]:
    return [m.facts() for m in runner.models]


@router.post("/runs", status_code=201, summary="Run a model on a text",
             response_model=RunFacts, response_model_exclude_unset=True,
             responses=errors(408, 413, 422, 503, 504))
async def create_run(req: RunRequest, runner: RunnerDep) -> dict[str, Any]:
    if req.trust_remote_code:
        raise ApiError(
            400, "trust_remote_code cannot be set by a request: the server runs only the "
            "models it was started with, with their library code"
        )
    m = runner.pick(req.model)
    text = check_text(req.text, "text")
    target = None if req.target is None else check_text(req.target, "target")

    def job_fn(job: Job) -> Any:
        if target is not None:
            arch = m.load().info.get("architecture")
            if arch != "encoder-decoder":
                raise ApiError(
                    400, f"target is the decoder's text of an encoder-decoder model; {m.id!r} "
                    f"is a{'n' * (arch == 'encoder')} {arch} model that reads only text: "
                    "leave target out (or put it into text)")
        return runner.capture(m, text, target, job)

    run, seconds = await runner.work(job_fn, "the run")
    return facts(runner, runner.store.add(run, seconds))


@router.post("/runs/{run_id}/perturb", status_code=201,
             summary="Run the text again with one token removed or masked; diff the two",
             response_model=PerturbResult, response_model_exclude_unset=True,
             responses=errors(404, 408, 413, 422, 503, 504))
async def perturb(run_id: str, req: PerturbRequest, runner: RunnerDep,
                  alignments: AlignmentsDep) -> dict[str, Any]:
    from ..analysis.perturb import perturbed_text
    from ..diff import compare

    run = runner.store.get(run_id).run
    m = runner.model_of(run)

    def job_fn(job: Job) -> Any:
        loaded = m.load()
        try:
            text = perturbed_text(run, req.position, req.mode,
                                  getattr(loaded.tokenizer, "mask_token", None))
        except AttnmapError as exc:
            raise ApiError(400, str(exc)) from None
        return text, runner.capture(m, text, run.target_text, job)

    text, (new, seconds) = await runner.work(job_fn, "the perturbed run")
    new_entry = runner.store.add(new, seconds)
    out: dict[str, Any] = {
        "original": run_id, "position": req.position, "mode": req.mode, "text": text,
        "run": facts(runner, new_entry), "ranking": None, "aligned": None, "diff_error": None,
    }
    try:
        d = await runner.work(lambda job: compare(run, new), "the diff")
        out["ranking"], out["aligned"] = d.ranking, int(len(d.ia))
        alignments.remember(run_id, new_entry.id, d)
    except AttnmapError as exc:
        out["diff_error"] = str(exc)
    return out


@router.get("/runs", summary="The runs kept, newest first", response_model=list[RunSummary],
            responses=errors())
async def list_runs(runner: RunnerDep) -> list[dict[str, Any]]:
    return [summary(e) for e in runner.store.entries()]


@router.get("/runs/{run_id}", summary="One run's facts: text, tokens, shapes",
            response_model=RunFacts, response_model_exclude_unset=True,
            responses=errors(404, 422))
async def get_run(run_id: str, runner: RunnerDep) -> dict[str, Any]:
    return facts(runner, runner.store.get(run_id))


@router.get(
    "/runs/{run_id}/payload",
    summary="The run's viewer payload without layers (application/octet-stream)",
    response_class=OctetStream,
    responses={200: BINARY, **errors(404, 422, 503, 504, binary=True)},
)
async def get_payload(run_id: str, runner: RunnerDep) -> OctetStream:
    entry = runner.store.get(run_id)
    payload = payload_module()
    data = await runner.work(
        lambda job: payload.encode(entry.run, layers="none", cmap=runner.cmap), "encoding")
    return OctetStream(data)


@router.get(
    "/runs/{run_id}/layers/{stack}/{layer}",
    summary="One layer of one stack, as the viewer's layer chunk (application/octet-stream)",
    response_class=OctetStream,
    responses={200: BINARY, **errors(404, 422, 503, 504, binary=True)},
)
async def get_layer(run_id: str, stack: str, layer: int, runner: RunnerDep) -> OctetStream:
    run = runner.store.get(run_id).run
    if stack not in run.stacks:
        raise ApiError(
            404, f"run {run_id} has no {quote(stack, 20)} attention; it has: "
            f"{', '.join(run.stacks)}"
        )
    try:
        index = run.layer_index(layer, stack)
    except AttnmapError as exc:
        raise ApiError(404, f"{stack} {exc}") from None
    payload = payload_module()
    data = await runner.work(
        lambda job: payload.encode_layer(run, stack, index), "encoding the layer"
    )
    return OctetStream(data)
