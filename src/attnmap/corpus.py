"""The corpus census: every document's head scores as numerators and row counts, on one
machine (``engine="local"``) or on Ray Data (``engine="ray"``).

Both engines run the same per-batch function, :func:`score_batch`, on the same records, so
their numbers are equal. Results are written in shards as batches finish; a rerun with the
same model, corpus and options skips the documents already in a shard (see
:mod:`attnmap._corpus_io` for the files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._corpus_io import (
    SKIP_HINT,
    Record,
    Shards,
    check_fingerprint,
    check_inputs,
    corpus_fingerprint,
    model_fingerprint,
    read_corpus,
)
from ._errors import AttnmapError
from .analysis.corpus import doc_rows
from .analysis.scores import SCORE_NAMES, ScoreParts, head_score_parts

# A document whose float32 weights would pass this many bytes is captured as queries and
# keys and scored a block of rows at a time (12 layers × 12 heads: above about 480 tokens).
QK_ABOVE = 128 << 20
PREVIEW = 240  # characters of each document kept for the report
RAY_HINT = "the ray engine needs Ray: pip install 'attnmap[ray]'"


# --- one batch: the function both engines run -------------------------------------------------
def _encode(loaded: Any, value: Any, max_tokens: int | None) -> tuple[Any, list[int], list[Any],
                                                                          int, dict[str, Any]]:
    """(text, ids, tokens, tokens before truncation, extra) for one document."""
    from .tokens import make_tokens

    tok, info = loaded.tokenizer, loaded.info
    limit = info.get("max_length")
    cap = min(x for x in (max_tokens, limit) if x) if (max_tokens or limit) else None
    extra: dict[str, Any] = {}
    if isinstance(value, list):
        from ._chat import encode_chat, tag_tokens

        text, ids, offsets, spans = encode_chat(tok, value)
        n_in = len(ids)
        if cap and n_in > cap:
            _check_cap(n_in, cap, max_tokens, info)
            ids, offsets = ids[:cap], (offsets[:cap] if offsets is not None else None)
        tokens = tag_tokens(make_tokens(tok, ids, offsets), offsets, spans)
        extra["messages"] = value
        return text, ids, tokens, n_in, extra
    kwargs: dict[str, Any] = {"add_special_tokens": True}
    if getattr(tok, "is_fast", False):
        kwargs["return_offsets_mapping"] = True
    enc = dict(tok(value, **kwargs))
    n_in = len(enc["input_ids"])
    if cap and n_in > cap:
        _check_cap(n_in, cap, max_tokens, info)
        enc = dict(tok(value, truncation=True, max_length=cap, **kwargs))
    ids = list(enc["input_ids"])
    return value, ids, make_tokens(tok, ids, enc.get("offset_mapping")), n_in, extra


def _check_cap(n: int, cap: int, max_tokens: int | None, info: dict[str, Any]) -> None:
    if max_tokens is None or max_tokens > cap:  # the model's own limit, not the user's
        raise AttnmapError(f"{n} tokens, longer than {info['id']}'s maximum of {cap}; pass "
                           f"--max-tokens {cap} to truncate")


def doc_run(loaded: Any, value: Any, *, max_tokens: int | None = None, store: str = "auto"
            ) -> Any:
    """One document's run, as the census reads it (``run.extra["tokens_in"]``: its tokens
    before truncation). `store` auto keeps queries and keys above ``QK_ABOVE`` bytes."""
    import torch

    from .capturing import _capture_qk, _facts, forward_weights
    from .run import AttentionRun

    info = loaded.info
    text, ids, tokens, n_in, extra = _encode(loaded, value, max_tokens)
    n = len(ids)
    input_ids = torch.tensor([ids], device=_device(loaded.model))
    big = 4 * n * n * int(info.get("layers") or 1) * int(info.get("heads") or 1) > QK_ABOVE
    if store == "qk" or (store == "auto" and big):
        stack, _ = _capture_qk(loaded, input_ids, False)
    else:
        _, stack = forward_weights(loaded, input_ids)
    extra["tokens_in"] = n_in
    return AttentionRun(text=text, tokens=tokens, stacks={"self": stack},
                        model=_facts(info, stack), extra=extra)


def doc_parts(loaded: Any, value: Any, *, max_tokens: int | None = None
              ) -> tuple[ScoreParts, int, int]:
    """One document's census parts, its tokens (kept) and its tokens before truncation."""
    run = doc_run(loaded, value, max_tokens=max_tokens)
    return head_score_parts(run), len(run.tokens), int(run.extra["tokens_in"])


def _device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def score_batch(loaded: Any, batch: dict[str, Any], *, max_tokens: int | None = None
                ) -> dict[str, np.ndarray]:
    """Score a batch of documents: ``batch`` has ``doc``, ``value`` (the text, or chat
    messages as JSON) and ``where``; one output row per document with its parts as bytes
    (``sums``/``counts``: float64/int64 ``[score, layer, head]``) or its ``error``."""
    rows: dict[str, list[Any]] = {k: [] for k in (
        "doc", "where", "tokens", "tokens_in", "truncated", "preview", "error", "stack",
        "layers", "heads", "sums", "counts")}
    for doc, raw, where in zip(batch["doc"], batch["value"], batch["where"]):
        value = json.loads(raw) if batch.get("chat") else raw
        err = ""
        try:
            parts, n, n_in = doc_parts(loaded, value, max_tokens=max_tokens)
        except AttnmapError as exc:
            err, parts, n, n_in = f"{where}: {exc}", None, 0, 0
        layers, heads = parts.shape if parts is not None else (0, 0)
        rows["doc"].append(int(doc))
        rows["where"].append(str(where))
        rows["tokens"].append(n)
        rows["tokens_in"].append(n_in)
        rows["truncated"].append(n < n_in)
        text = value if isinstance(value, str) else "\n".join(
            f"{m['role']}: {m['content']}" for m in value)
        rows["preview"].append(text[:PREVIEW])
        rows["error"].append(err)
        rows["stack"].append(parts.stack if parts is not None else "")
        rows["layers"].append(layers)
        rows["heads"].append(heads)
        rows["sums"].append(b"" if parts is None else np.stack(
            [parts.sums[k] for k in SCORE_NAMES]).astype(np.float64).tobytes())
        rows["counts"].append(b"" if parts is None else np.stack(
            [parts.counts[k] for k in SCORE_NAMES]).astype(np.int64).tobytes())
    out: dict[str, np.ndarray] = {}
    for k, v in rows.items():
        out[k] = np.array(v, dtype=object) if k in ("where", "preview", "error", "stack",
                                                    "sums", "counts") else np.array(v)
    return out


def _decode(result: dict[str, Any]) -> tuple[list[tuple[int, ScoreParts]], list[dict[str, Any]],
                                             list[str]]:
    """The parts, the documents' facts and the errors of one :func:`score_batch` result."""
    parts, docs, errors = [], [], []
    for i in range(len(result["doc"])):
        if result["error"][i]:
            errors.append(str(result["error"][i]))
            continue
        shape = (len(SCORE_NAMES), int(result["layers"][i]), int(result["heads"][i]))
        sums = np.frombuffer(bytes(result["sums"][i]), dtype=np.float64).reshape(shape)
        counts = np.frombuffer(bytes(result["counts"][i]), dtype=np.int64).reshape(shape)
        p = ScoreParts(str(result["stack"][i]), {k: sums[j] for j, k in enumerate(SCORE_NAMES)},
                       {k: counts[j] for j, k in enumerate(SCORE_NAMES)})
        doc = int(result["doc"][i])
        parts.append((doc, p))
        docs.append({"doc": doc, "where": str(result["where"][i]),
                     "tokens": int(result["tokens"][i]), "tokens_in": int(result["tokens_in"][i]),
                     "truncated": bool(result["truncated"][i]),
                     "preview": str(result["preview"][i])})
    return parts, docs, errors


def _batch_of(records: list[Record], chat: bool) -> dict[str, Any]:
    return {"doc": np.array([r.doc for r in records], dtype=np.int64),
            "value": np.array([json.dumps(r.value) if chat else r.value for r in records],
                              dtype=object),
            "where": np.array([r.where for r in records], dtype=object),
            "chat": chat}


# --- engines ----------------------------------------------------------------------------------
def _by_length(records: list[Record]) -> list[Record]:
    """Longest first: batches hold documents of about one length, and the slowest start early."""
    def size(r: Record) -> int:
        return len(r.value) if isinstance(r.value, str) else sum(len(m["content"])
                                                                for m in r.value)
    return sorted(records, key=lambda r: (-size(r), r.doc))


def _run_local(records: list[Record], model_kwargs: dict[str, Any], opts: dict[str, Any],
               batch_size: int, on_result: Callable[[dict[str, Any]], None]) -> None:
    from .capturing import get_model

    loaded = get_model(**model_kwargs)
    _check_model(loaded)
    ordered = _by_length(records)
    for i in range(0, len(ordered), batch_size):
        on_result(score_batch(loaded, _batch_of(ordered[i:i + batch_size], opts["chat"]),
                              max_tokens=opts["max_tokens"]))


def _check_model(loaded: Any) -> None:
    if loaded.info.get("architecture") == "encoder-decoder":
        raise AttnmapError(f"the corpus census reads self-attention of encoder or decoder "
                           f"models; {loaded.info['id']!r} is an encoder-decoder")


class _RayScorer:
    """A Ray Data actor: loads the model once, then scores batch after batch."""

    def __init__(self, model_kwargs: dict[str, Any], opts: dict[str, Any]) -> None:
        from .capturing import get_model

        self.loaded = get_model(**model_kwargs)
        _check_model(self.loaded)
        self.opts = opts

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        batch["chat"] = self.opts["chat"]
        return score_batch(self.loaded, batch, max_tokens=self.opts["max_tokens"])


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AttnmapError(RAY_HINT) from None
    return ray


def _start_local_ray(ray: Any, env: dict[str, Any]) -> None:
    """A local Ray on 2 CPUs; its start can time out on a busy machine, so it gets a second
    try before the census gives up with one line."""
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, runtime_env=env, log_to_driver=False)
            return
        except Exception as exc:  # Ray's start fails with grpc, connection or runtime errors
            ray.shutdown()
            if attempt == 2:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise AttnmapError(
                    f"could not start a local Ray ({first}); try again, or join a running "
                    "cluster with --ray-address") from None


def _run_ray(records: list[Record], model_kwargs: dict[str, Any], opts: dict[str, Any],
             batch_size: int, on_result: Callable[[dict[str, Any]], None], *,
             address: str | None, gpus_per_worker: float, workers: int | None) -> None:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {k: os.environ[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE")
                            if k in os.environ}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            _start_local_ray(ray, env)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        res = ray.cluster_resources()
        if workers is None:
            if gpus_per_worker:
                workers = max(1, int(res.get("GPU", 0) // gpus_per_worker))
            else:
                workers = max(1, int(res.get("CPU", 1)))
        ordered = _by_length(records)
        items = [{"doc": r.doc, "value": json.dumps(r.value) if opts["chat"] else r.value,
                  "where": r.where} for r in ordered]
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
        kwargs: dict[str, Any] = {"num_gpus": gpus_per_worker} if gpus_per_worker else {
            "num_cpus": 1}
        out = ds.map_batches(_RayScorer, fn_constructor_kwargs={"model_kwargs": model_kwargs,
                                                                 "opts": opts},
                             batch_size=batch_size, concurrency=workers, batch_format="numpy",
                             **kwargs)
        for result in out.iter_batches(batch_size=None, batch_format="numpy"):
            on_result(result)
    finally:
        if started:
            ray.shutdown()


# --- the census -------------------------------------------------------------------------------
def census(
    inputs: list[str],
    *,
    model: str | None = None,
    outdir: str | os.PathLike[str],
    field: str = "text",
    split: str = "line",
    chat: bool = False,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float = 0,
    workers: int | None = None,
    batch_size: int = 16,
    skip_bad: bool = False,
    restart: bool = False,
    trust_remote_code: bool = False,
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    progress: Callable[[int, int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every head on every document of the corpus; write ``heads.parquet``,
    ``docs.parquet`` and ``summary.json`` into `outdir` and return the summary.

    `progress(done, total)` is called as documents finish (those of an earlier run count as
    done at the start).
    """
    if engine not in ("local", "ray"):
        raise AttnmapError(f"--engine must be local or ray (not {engine!r})")
    try:  # the census writes Parquet
        import pyarrow  # noqa: F401
    except ImportError:
        raise AttnmapError("the corpus census writes Parquet files and needs pyarrow: "
                           "pip install 'attnmap[corpus]'") from None
    if engine == "ray":
        _import_ray()  # before the slow part
    if batch_size < 1:
        raise AttnmapError(f"--batch-size must be 1 or more (not {batch_size})")
    if max_tokens is not None and max_tokens < 2:
        raise AttnmapError(f"--max-tokens must be 2 or more (not {max_tokens})")
    out = Path(outdir).expanduser()
    if out.exists() and not out.is_dir():
        raise AttnmapError(f"-o {str(out)!r} is a file; give a folder for the census")
    if not out.parent.is_dir():
        raise AttnmapError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not "
                           "exist")
    paths = check_inputs(inputs)
    records, skipped = read_corpus(paths, field=field, split=split, chat=chat,
                                   max_docs=max_docs, skip_bad=skip_bad)
    opts = {"max_tokens": max_tokens, "chat": chat}
    fp: dict[str, Any] = {
          "format": 1, "model": model_fingerprint(model), "corpus": corpus_fingerprint(paths),
          "options": {"field": field, "split": split, "chat": chat, "max_tokens": max_tokens,
                      "torch_dtype": torch_dtype or "auto"},
          "model_arg": None if model is None else str(model)}
    out.mkdir(exist_ok=True)
    check_fingerprint(out, fp, restart)
    shards = Shards(out)
    done = shards.done()
    pending = [r for r in records if r.doc not in done]
    total = len(records)
    finished = total - len(pending)
    if say and finished:
        say(f"resuming: {finished} of {total} documents already done")
    if progress:
        progress(finished, total)
    errors: list[str] = []

    def on_result(result: dict[str, Any]) -> None:
        nonlocal finished
        parts, docs, errs = _decode(result)
        if errs and not skip_bad:
            raise AttnmapError(f"{errs[0]}; {SKIP_HINT}")
        errors.extend(errs)
        if parts:
            from .analysis.corpus import concat

            table = concat([doc_rows(d, p) for d, p in sorted(parts, key=lambda x: x[0])])
            shards.write(table, sorted(docs, key=lambda d: d["doc"]))
        finished += len(result["doc"])
        if progress:
            progress(finished, total)

    model_kwargs = {"model": model, "trust_remote_code": trust_remote_code, "device": device,
                    "torch_dtype": torch_dtype}
    if pending:
        if engine == "local":
            _run_local(pending, model_kwargs, opts, batch_size, on_result)
        else:
            _run_ray(pending, model_kwargs, opts, batch_size, on_result, address=ray_address,
                     gpus_per_worker=gpus_per_worker, workers=workers)
    keep = {r.doc for r in records}
    if not (keep & shards.done()):
        raise AttnmapError(f"no document of the corpus could be scored ({len(errors)} skipped: "
                           f"{errors[0] if errors else 'none'})")
    ident = fp["model"]["id"]
    return shards.finish(out, keep, {"model": ident, "skipped": skipped + len(errors)})
