"""The app's request and response bodies (pydantic), and the error responses each route
declares, so that ``/openapi.json`` describes every answer the server gives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


# --- requests ----------------------------------------------------------------------------------
class RunRequest(BaseModel):
    """``POST /api/runs``: the text to look at and which of the server's models reads it."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="the input text (non-empty, no NUL bytes)")
    model: str | None = Field(
        None, description="one of the ids from GET /api/models; default the first one"
    )
    target: str | None = Field(
        None, description="encoder-decoder models only (400 for any other): the decoder's "
        "text (default: its own greedy continuation)"
    )
    trust_remote_code: bool = Field(
        False, description="always refused: a request can never make the server run a "
        "model's own code"
    )


class PerturbRequest(BaseModel):
    """Run a stored run's text again with one token removed or masked."""

    model_config = ConfigDict(extra="forbid")
    position: int = Field(ge=0, description="the input token to change (0-based)")
    mode: str = Field("remove", pattern="^(remove|mask)$",
                      description="'remove' the token, or 'mask' it with the mask token")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="system, user, assistant, … (the chat template's roles)")
    content: str


class GenerateRequest(BaseModel):
    """``POST /api/generate``: a prompt (text, or chat messages through the model's chat
    template) for the model to write on, token by token."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="the prompt (give text or messages)")
    messages: list[ChatMessage] | None = Field(
        None, description="chat messages instead of text (the model needs a chat template)")
    model: str | None = Field(
        None, description="one of the ids from GET /api/models; default the first one")
    max_new_tokens: int = Field(
        20, description="how many tokens the model may write (at least 1, at most this "
        "server's limit)")
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    temperature: float | None = Field(None, description="with do_sample only: above 0")
    top_p: float | None = Field(None, description="with do_sample only: above 0, at most 1")
    seed: int | None = Field(None, description="with do_sample: makes the sample repeatable")
    stop: list[str] | None = Field(None, description="strings that end the generation")


class StopRequest(BaseModel):
    """``POST /api/generate/stop``: end the running generation of a model."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="the model whose generation to stop; "
                              "default the first one")


class StopResult(BaseModel):
    model: str
    stopped: bool = Field(description="true if a generation was running and was asked to "
                          "stop (its stream then ends with done)")


# --- responses ---------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error: one message that names the problem and the way out."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"]
    models: list[str] = Field(description="the ids of the models this server runs")
    runs: int = Field(description="runs kept now")
    bytes: int = Field(description="bytes of attention the kept runs hold")
    evicted: int = Field(description="runs evicted since start-up")
    max_runs: int
    max_bytes: int


class ModelFacts(BaseModel):
    """A model the server can run; the fields after ``loaded`` only once it is loaded."""

    id: str
    label: str
    loaded: bool
    architecture: str | None = None
    model_type: str | None = None
    layers: int | None = None
    heads: int | None = None
    causal: bool | None = None
    max_length: int | None = None
    mask_token: str | None = Field(None, description="what perturb's mode 'mask' puts in")


class RunSummary(BaseModel):
    id: str
    model: str | None
    n_tokens: int
    preview: str = Field(description="the text's first 80 characters")
    created: float = Field(description="seconds since the epoch")


class RunFacts(RunSummary):
    text: str
    tokens: list[str] = Field(description="the display strings of the (query) tokens")
    special: list[bool]
    stacks: list[str] = Field(description="'self', or 'encoder', 'decoder' and 'cross'")
    shape: dict[str, list[int]] = Field(description="per stack [layer, head, query, key]")
    causal: bool
    architecture: str | None
    bytes: int
    seconds: float = Field(description="how long the forward took")
    mask_token: str | None
    target_text: str | None = Field(None, description="encoder-decoder runs only")
    target_tokens: list[str] | None = Field(None, description="encoder-decoder runs only")
    generated: int | None = Field(None, description="generated runs only: how many of the "
                                  "tokens the model wrote (the last ones)")
    storage: Literal["qk", "weights"] | None = Field(
        None, description="'qk': the run keeps queries and keys and its layers are computed "
        "when read (long runs: ask for tiles); 'weights': it holds the weights")


class RankedHead(BaseModel):
    layer: int
    head: int
    mean_abs: float = Field(description="mean |A − B| over cells neither run masks")
    js: float = Field(description="mean Jensen–Shannon divergence of the rows (base 2)")


class PerturbResult(BaseModel):
    original: str
    position: int
    mode: Literal["remove", "mask"]
    text: str = Field(description="the changed text that was run")
    run: RunFacts
    ranking: list[RankedHead] | None = Field(description="null when the runs cannot be aligned")
    aligned: int | None
    diff_error: str | None = Field(description="why the two runs could not be compared")


class Pair(BaseModel):
    a: list[int]
    b: list[int]


class Labels(BaseModel):
    a: str
    b: str


class DiffResult(BaseModel):
    a: str
    b: str
    stack: str
    aligned: int
    positions: Pair = Field(description="positions in each run's query tokens of the stack, "
                            "paired: equal tokens, or substituted ones (see changed)")
    changed: list[bool] = Field(description="per aligned pair: true where it is a "
                                "substitution (the tokens differ), false where they are equal")
    labels: Labels = Field(description="the texts for one model, the model ids for two")
    ranking: list[RankedHead]


# --- the error responses routes declare ----------------------------------------------------------
_WHY = {
    400: "a bad value (the message names it), or a Host header this server does not serve",
    405: "the path does not take this method (the Allow header lists those it does)",
    408: "the request body did not arrive within this server's body timeout",
    409: "this model is already generating (one generation per model at a time); stop it "
         "or wait",
    404: "no such run (or it was evicted: the message says so), stack, layer, head or file",
    413: "the request body, or the memory one run would need, is over this server's limit",
    422: "the request does not match this schema",
    500: "an internal error (the server's output has the traceback)",
    503: "the model could not be loaded or stays busy; the payload module is missing",
    504: "the work took longer than this server's --timeout",
}


def errors(*codes: int, binary: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, plus the 400 (Host check) and 500 that
    any route can answer; every one is JSON :class:`ErrorBody`.

    `binary`: the route answers ``application/octet-stream`` on success, so its errors name
    their JSON content themselves (FastAPI would give them the route's media type).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({400, 500, *codes}):
        if binary:
            out[code] = {"description": _WHY[code], "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        else:
            out[code] = {"model": ErrorBody, "description": _WHY[code]}
    return out


EVENT_STREAM = {
    "description": "Server-Sent Events: one `token` event per decoding step (data: JSON "
    "{\"step\": i, \"token\": text}) in order, then `done` (data: JSON, the stored run's "
    "summary with `generated` and `stopped`) or `error` (data: JSON {\"detail\": message})",
    # before OpenAPI 3.2 (this document is 3.1) the schema describes one event
    "content": {"text/event-stream": {"schema": {
        "type": "object", "required": ["event", "data"],
        "properties": {"event": {"type": "string", "enum": ["token", "done", "error"]},
                       "data": {"type": "string", "contentMediaType": "application/json"}},
    }}},
}

BINARY = {
    "description": "the bytes, in the viewer's payload format",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}

TILE = {
    "description": "float32 little-endian values, row by row ([rows, cols]); NaN where every "
    "cell of the block is masked or lies past the matrix",
    "headers": {name: {"description": what, "schema": {"type": "integer"}} for name, what in (
        ("X-Tile-Rows", "values down"), ("X-Tile-Cols", "values across"),
        ("X-Tile-Block", "cells per value along each side"))},
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
