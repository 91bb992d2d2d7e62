"""Tiny vision models for tests, built from configs with processors made from their classes
(no download), and pictures drawn here."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gradient_image(width: int, height: int):
    """An RGB picture whose red channel grows with x and green with y (blue constant), so a
    pixel's colour says where it is."""
    from PIL import Image

    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)
    return Image.fromarray(rgb)


def build_vit(path: Path, *, image_size: int = 32, patch_size: int = 8, layers: int = 2,
              heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=32,
                    num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=64)
    model = ViTModel(cfg, add_pooling_layer=False)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def build_dinov2_registers(path: Path, *, registers: int = 4, seed: int = 0) -> Path:
    """DINOv2 with registers: shortest edge resized to 32, centre crop 28, 7-pixel patches."""
    import torch
    from transformers import (
        BitImageProcessor,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    cfg = Dinov2WithRegistersConfig(image_size=28, patch_size=7, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, num_register_tokens=registers)
    model = Dinov2WithRegistersModel(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                      do_center_crop=True).save_pretrained(path)
    return path


def build_llava(path: Path, *, seed: int = 0) -> Path:
    """A LLaVA-style VLM: a CLIP vision tower (32-pixel images, 8-pixel patches: 16 image
    tokens) and a Llama language model, with a byte-level BPE tokenizer trained here."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from _models import train_tokenizer

    torch.manual_seed(seed)
    tok = train_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                       max_position_embeddings=128)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    image_proc = CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=8,
                   vision_feature_select_strategy="default", image_token="<image>",
                   num_additional_image_tokens=1).save_pretrained(path)
    return path
