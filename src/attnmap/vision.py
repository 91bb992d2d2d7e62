"""Capture attention over image patches: vision transformers and vision-language models.

A vision model (ViT, DeiT, DINOv2 with or without registers, CLIP/SigLIP vision towers) reads
the picture its own image processor makes; every token is a patch, or a CLS, distillation or
register token. A vision-language model (LLaVA-style, Gemma 3) reads a prompt whose image
placeholder the processor expands into image tokens, one per patch of the image grid; its
text tokens attend to them.

The run records the image size, the patch grid and a PNG thumbnail (see
:mod:`attnmap.patches`); each patch token knows its grid cell and the pixels it covers.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import AttnmapError
from .patches import THUMBNAIL_SIDE, image_magic, patch_boxes, resized_size
from .run import AttentionRun, AttentionStack
from .tokens import Token

# Larger images are refused before decoding (a 16k × 16k photo, or a decompression bomb).
MAX_PIXELS = 100_000_000
MAX_FILE_BYTES = 200 << 20
# Vision towers of two-tower models: the class that reads pixels alone.
_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel",
           "siglip2": "Siglip2VisionModel"}


@dataclass
class VisionLoaded:
    """A vision model (or VLM) ready for capture, with its processor and facts."""

    id: str
    model: Any
    processor: Any  # the image processor (vision) or the full processor (vlm)
    kind: str  # "vision" or "vlm"
    info: dict[str, Any]


_CACHE: dict[tuple[str, str, str], VisionLoaded] = {}


def read_image(path: str | os.PathLike[str]) -> Any:
    """The image at `path` as an RGB Pillow image; a missing, unreadable or huge file is one
    :class:`AttnmapError` line."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.exists():
        raise AttnmapError(f"image {str(p)!r} does not exist")
    if not p.is_file():
        raise AttnmapError(f"image {str(p)!r} is not a file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AttnmapError(f"image {str(p)!r} is {size / 1e6:.0f} MB, more than attnmap reads "
                           f"({MAX_FILE_BYTES >> 20} MB); make it smaller first")
    with open(p, "rb") as fh:
        head = fh.read(16)
    if image_magic(head) is None:
        raise AttnmapError(f"{str(p)!r} is not a PNG, JPEG or WebP image; convert it to one of "
                           "those")
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise AttnmapError(
                    f"image {str(p)!r} is {w}×{h} pixels, more than attnmap reads "
                    f"({MAX_PIXELS:,} pixels); scale it down first")
            img.load()
            return img.convert("RGB")
    except AttnmapError:
        raise
    except Image.DecompressionBombError:
        raise AttnmapError(f"image {str(p)!r} is too large to decode safely; scale it down "
                           "first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise AttnmapError(f"cannot read image {str(p)!r} ({detail}); is the file complete?"
                           ) from None


def thumbnail_png(img: Any, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """PNG bytes (uint8) of `img` scaled so its longer side is at most `side` pixels."""
    from PIL import Image

    thumb = img.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def _config(model: Any) -> tuple[str, str, Any]:
    from transformers import AutoConfig

    from .models import _config as load_config
    from .models import resolve

    ident, source, local = resolve(model)
    try:
        config, _ = load_config(ident, source, local, {})
    except OSError as exc:
        raise AttnmapError(f"cannot read model {ident!r}'s config ({exc}); pass a local "
                           "directory with --model PATH") from None
    assert AutoConfig is not None
    return ident, source, config


def model_kind(config: Any) -> str:
    """'vision' (reads pixels alone), 'vlm' (a prompt with an image) or 'text'."""
    from .models import saved_class

    if getattr(config, "model_type", "") in _TOWERS:
        return "vision"
    if getattr(config, "vision_config", None) is not None and hasattr(config, "text_config"):
        return "vlm"
    cls = saved_class(config)
    if cls is not None and getattr(cls, "main_input_name", "") == "pixel_values":
        return "vision"
    if hasattr(config, "patch_size") and hasattr(config, "image_size") and not hasattr(
            config, "vocab_size"):
        return "vision"
    return "text"


def load_vision(model: Any = None, *, device: str | None = "auto",
                torch_dtype: str | None = "auto", progress: bool = False) -> VisionLoaded:
    """Load a vision model or VLM and its processor from a folder or the hub (eager
    attention, so the weights come back)."""
    ident, source, config = _config(model)
    key = (source, str(device), str(torch_dtype))
    if key in _CACHE:
        return _CACHE[key]
    kind = model_kind(config)
    if kind == "text":
        raise AttnmapError(
            f"model {ident!r} reads text, not images; give it a text, or pick a vision model "
            "(ViT, DeiT, DINOv2, CLIP/SigLIP) or a vision-language model for an image")
    import transformers

    from .models import _quiet_transformers, pick_device, pick_dtype, saved_class

    dev = pick_device(device)
    dtype = pick_dtype(torch_dtype, dev, config)
    t0 = time.perf_counter()
    if progress:
        print(f"attnmap: loading {ident} …", flush=True, file=__import__("sys").stderr)
    try:
        with _quiet_transformers():
            if kind == "vlm":
                processor = transformers.AutoProcessor.from_pretrained(source)
                cls = saved_class(config) or transformers.AutoModelForImageTextToText
            else:
                processor = transformers.AutoImageProcessor.from_pretrained(source)
                tower = _TOWERS.get(getattr(config, "model_type", ""))
                cls = getattr(transformers, tower) if tower else (
                    saved_class(config) or transformers.AutoModel)
            obj = cls.from_pretrained(source, attn_implementation="eager", dtype=dtype)
    except (OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise AttnmapError(f"cannot load vision model {ident!r} ({detail}); it needs its "
                           "processor files (preprocessor_config.json) beside the weights"
                           ) from None
    obj.eval()
    if dev != "cpu":
        obj.to(dev)
    cfg = obj.config
    vcfg = getattr(cfg, "vision_config", None) or cfg
    text_cfg = cfg.get_text_config() if kind == "vlm" else vcfg
    param = next(obj.parameters())
    info = {
        "id": ident,
        "architecture": "decoder" if kind == "vlm" else "encoder",
        "model_type": getattr(cfg, "model_type", None),
        "class": type(obj).__name__,
        "layers": getattr(text_cfg, "num_hidden_layers", None),
        "heads": getattr(text_cfg, "num_attention_heads", None),
        "causal": kind == "vlm",
        "max_length": None,
        "dtype": str(param.dtype).replace("torch.", ""),
        "device": str(param.device),
        "input": "image",
    }
    if progress:
        print(f"attnmap: loaded {ident} in {time.perf_counter() - t0:.1f}s", flush=True,
              file=__import__("sys").stderr)
    out = VisionLoaded(id=ident, model=obj, processor=processor, kind=kind, info=info)
    _CACHE[key] = out
    return out


def _processor_geometry(proc: Any, width: int, height: int, model_hw: tuple[int, int],
                        ) -> tuple[tuple[int, int], tuple[int, int] | None, bool]:
    """(resized (h, w), centre crop (h, w) or None, exact) for the processor's resize and crop;
    when they do not give the model's input size, a plain resize of the whole image (not
    exact: a processor attnmap does not know)."""
    d = proc.to_dict()
    resized = (height, width)
    if d.get("do_resize", True) and d.get("size"):
        try:
            resized = resized_size(width, height, d["size"])
        except AttnmapError:
            return model_hw, None, False
    crop = None
    if d.get("do_center_crop") and d.get("crop_size"):
        c = d["crop_size"]
        crop = (int(c["height"]), int(c["width"])) if isinstance(c, dict) else (int(c), int(c))
    final = crop or resized
    if tuple(final) != tuple(model_hw):
        return model_hw, None, False
    return resized, crop, True


def _patch_size(cfg: Any) -> tuple[int, int]:
    p = getattr(cfg, "patch_size", 16)
    if isinstance(p, (list, tuple)):
        return int(p[0]), int(p[-1])
    return int(p), int(p)


def _special_kinds(cfg: Any, n_special: int) -> list[str]:
    """What each token before the patches is, from the model's config."""
    kinds = ["cls"] if n_special else []
    if getattr(cfg, "model_type", "").startswith("deit") and n_special >= 2:
        kinds.append("distillation")
    while len(kinds) < n_special:
        kinds.append("register")
    return kinds


_LABELS = {"cls": "[CLS]", "distillation": "[DIST]", "register": "[REG{}]"}


def _special_token(kind: str, i: int, n_reg: int) -> Token:
    text = _LABELS[kind].format(n_reg) if kind == "register" else _LABELS[kind]
    return Token(text=text, raw=text, id=i, special=True, kind=kind)


def _patch_tokens(boxes: list[tuple[int, int, int, int]], grid: tuple[int, int],
                  first_id: int = 0) -> list[Token]:
    out = []
    for j, box in enumerate(boxes):
        r, c = divmod(j, grid[1])
        label = f"({r},{c})"
        out.append(Token(text=label, raw=label, id=first_id + j, row=r, col=c, box=box,
                         kind="patch"))
    return out


def capture_image(
    image: str | os.PathLike[str] | Any,
    model: Any = None,
    *,
    prompt: str | None = None,
    device: str | None = "auto",
    torch_dtype: str | None = "auto",
    progress: bool = False,
) -> AttentionRun:
    """Run a vision model (or a VLM with `prompt`) on `image` (a path or a Pillow image) once
    and return every layer's and head's attention, with patch tokens."""
    source_name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
    img = read_image(image) if isinstance(image, (str, os.PathLike)) else image.convert("RGB")
    loaded = model if isinstance(model, VisionLoaded) else load_vision(
        model, device=device, torch_dtype=torch_dtype, progress=progress)
    if loaded.kind == "vlm":
        if prompt is None or not str(prompt).strip():
            raise AttnmapError(f"model {loaded.id!r} reads an image with a prompt; give one "
                               'with --chat "What is in the picture?"')
        return _capture_vlm(loaded, img, str(prompt), source_name)
    if prompt is not None:
        raise AttnmapError(f"model {loaded.id!r} is a vision model and reads the image alone; "
                           "leave out --chat (a prompt needs a vision-language model)")
    return _capture_vision(loaded, img, source_name)


def _forward(model: Any, inputs: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return model(**inputs, output_attentions=True, return_dict=True)


def _to_numpy(attentions: Any, ident: str) -> list[np.ndarray]:
    if not attentions or any(a is None for a in attentions):
        raise AttnmapError(f"model {ident!r} returned no attention weights; it needs an eager "
                           "attention implementation")
    return [a[0].detach().float().cpu().numpy() for a in attentions]  # each [head, q, k]


def _capture_vision(loaded: VisionLoaded, img: Any, source_name: str) -> AttentionRun:
    model = loaded.model
    cfg = model.config
    vcfg = getattr(cfg, "vision_config", None) or cfg
    batch = loaded.processor(images=img, return_tensors="pt")
    pixels = batch["pixel_values"].to(device=next(model.parameters()).device,
                                      dtype=next(model.parameters()).dtype)
    out = _forward(model, {"pixel_values": pixels})
    layers = _to_numpy(out.attentions, loaded.id)
    n = layers[0].shape[-1]
    hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    ph, pw = _patch_size(vcfg)
    grid = (hw[0] // ph, hw[1] // pw)
    n_special = n - grid[0] * grid[1]
    if n_special < 0 or n_special > 64:
        raise AttnmapError(f"model {loaded.id!r} gave {n} tokens for a {grid[0]}×{grid[1]} "
                           "patch grid; attnmap cannot tell its patches apart")
    width, height = img.size
    resized, crop, exact = _processor_geometry(loaded.processor, width, height, hw)
    boxes = patch_boxes(width, height, resized, crop, (ph, pw), grid)
    tokens: list[Token] = []
    n_reg = 0
    for i, kind in enumerate(_special_kinds(vcfg, n_special)):
        tokens.append(_special_token(kind, i, n_reg))
        n_reg += kind == "register"
    tokens += _patch_tokens(boxes, grid)
    mask = np.zeros((n, n), dtype=bool)
    stack = AttentionStack("self", layers, mask)
    info = dict(loaded.info, layers=len(layers), heads=int(layers[0].shape[0]))
    extra: dict[str, Any] = {
        "image": {"width": width, "height": height, "grid": list(grid),
                  "model_input": list(hw), "patch": [ph, pw], "kind": "vision",
                  "exact_boxes": exact, "source": Path(source_name).name},
        "image_png": thumbnail_png(img),
    }
    return AttentionRun(text=Path(source_name).name, tokens=tokens, stacks={"self": stack},
                        model=info, extra=extra)


def _vlm_prompt(processor: Any, prompt: str) -> str:
    template = getattr(processor, "chat_template", None)
    if template:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": prompt}]}]
        text: str = processor.apply_chat_template(messages, add_generation_prompt=True)
        return text
    token = getattr(processor, "image_token", None) or "<image>"
    return f"{token}\n{prompt}"


def _capture_vlm(loaded: VisionLoaded, img: Any, prompt: str, source_name: str) -> AttentionRun:
    import torch

    from ._qk import _Unsupported, recording
    from .capturing import _recorded_masks
    from .tokens import make_tokens

    model, proc = loaded.model, loaded.processor
    cfg = model.config
    text = _vlm_prompt(proc, prompt)
    batch = proc(images=img, text=text, return_tensors="pt")
    dev = next(model.parameters()).device
    inputs = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    ids = inputs["input_ids"][0].tolist()
    image_id = getattr(cfg, "image_token_id", None)
    if image_id is None:
        image_id = getattr(cfg, "image_token_index", None)
    image_pos = [i for i, t in enumerate(ids) if t == image_id]
    if not image_pos:
        raise AttnmapError(f"model {loaded.id!r}'s processor put no image tokens in the prompt")
    rec = None
    with torch.no_grad():
        try:
            with recording(model, "eager") as rec:
                out = model(**inputs, output_attentions=True, return_dict=True)
        except _Unsupported:
            rec = None
            out = model(**inputs, output_attentions=True, return_dict=True)
    layers = _to_numpy(out.attentions, loaded.id)
    n = len(ids)
    if rec is not None:  # the vision tower's layers come first; keep the text model's
        kept: list[Any] = [m for m in rec.masks if m is not None and m.shape == (n, n)]
        rec.masks = kept[-len(layers):]
    masks = _recorded_masks(rec, len(layers), n, True)
    hw = (int(inputs["pixel_values"].shape[-2]), int(inputs["pixel_values"].shape[-1]))
    n_img = len(image_pos)
    side = math.isqrt(n_img)
    first_cls = False
    if side * side != n_img and math.isqrt(n_img - 1) ** 2 == n_img - 1:
        first_cls, side = True, math.isqrt(n_img - 1)  # a "full" feature strategy keeps CLS
    if side * side != n_img - first_cls:
        raise AttnmapError(f"model {loaded.id!r} puts {n_img} image tokens in the prompt, not "
                           "a square grid; attnmap cannot place them on the image")
    grid = (side, side)
    width, height = img.size
    image_proc = getattr(proc, "image_processor", proc)
    resized, crop, exact = _processor_geometry(image_proc, width, height, hw)
    patch = (hw[0] / side, hw[1] / side)
    boxes = patch_boxes(width, height, resized, crop, patch, grid)
    tokenizer = getattr(proc, "tokenizer", proc)
    tokens = make_tokens(tokenizer, ids)
    patches = _patch_tokens(boxes, grid)
    place = image_pos[1:] if first_cls else image_pos
    for j, pos in enumerate(place):
        p = patches[j]
        tokens[pos] = Token(text=p.text, raw=tokens[pos].raw, id=tokens[pos].id, special=False,
                            row=p.row, col=p.col, box=p.box, kind="patch")
    if first_cls:
        pos = image_pos[0]
        tokens[pos] = Token(text="[CLS]", raw=tokens[pos].raw, id=tokens[pos].id, special=True,
                            kind="cls")
    stack = AttentionStack("self", layers, masks[0], masks)
    from .capturing import _facts

    info = _facts(dict(loaded.info, layers=len(layers), heads=int(layers[0].shape[0])), stack)
    extra: dict[str, Any] = {
        "image": {"width": width, "height": height, "grid": list(grid), "model_input": list(hw),
                  "kind": "vlm", "exact_boxes": exact, "source": Path(source_name).name},
        "image_png": thumbnail_png(img),
        "prompt": prompt,
    }
    return AttentionRun(text=text, tokens=tokens, stacks={"self": stack}, model=info,
                        extra=extra)

