"""A zoo of tiny real architectures, built from configs (random weights, no download).

Each entry is small (2–4 layers, 32–64 wide) but keeps what makes its family different:
grouped-query attention, sliding windows (Mistral, Qwen2 layer types, Gemma 2/3 alternating
layers, ModernBERT local layers), soft-capping (Gemma 2), ALiBi (BLOOM, Falcon), relative
positions (DeBERTa-v2, T5), classification heads and multimodal wrappers of causal LMs.
Windows are short (4 tokens) so the test texts are longer than every window.
"""

from __future__ import annotations

from typing import Any

WINDOW = 4

# name → (config class, model class, config kwargs)
_SMALL = dict(vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128)


def _llama_like(**over: Any) -> dict[str, Any]:
    return {**_SMALL, "num_key_value_heads": 2, **over}


SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _llama_like()),
    "llama-base": ("LlamaConfig", "LlamaModel", _llama_like()),
    "qwen2-sliding": ("Qwen2Config", "Qwen2ForCausalLM", _llama_like(
        num_hidden_layers=3, use_sliding_window=True, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "qwen2-classifier": ("Qwen2Config", "Qwen2ForSequenceClassification", _llama_like(
        num_labels=2, pad_token_id=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", _llama_like(head_dim=8)),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", _llama_like(
        sliding_window=WINDOW)),
    "gemma2-softcap": ("Gemma2Config", "Gemma2ForCausalLM", _llama_like(
        head_dim=8, sliding_window=WINDOW, attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0, query_pre_attn_scalar=8)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _llama_like(
        num_hidden_layers=3, head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _llama_like(pad_token_id=1)),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_SMALL}),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(
        vocab_size=None, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
        pad_token_id=1)),
    "gpt-j": ("GPTJConfig", "GPTJForCausalLM", dict(
        vocab_size=None, n_embd=32, n_layer=2, n_head=4, n_positions=128, rotary_dim=4)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(
        vocab_size=None, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        alibi=True, new_decoder_architecture=False, multi_query=True, parallel_attn=True)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(
        vocab_size=None, hidden_size=32, n_layer=2, n_head=4)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=None, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(
        vocab_size=None, dim=32, hidden_dim=64, n_layers=2, n_heads=4,
        max_position_embeddings=128, pad_token_id=1)),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", {**_SMALL, "pad_token_id": 1}),
    "electra": ("ElectraConfig", "ElectraForMaskedLM", dict(
        vocab_size=None, embedding_size=32, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
        pad_token_id=1)),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForMaskedLM", {
        **_SMALL, "relative_attention": True, "position_buckets": 16,
        "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 32, "pad_token_id": 1}),
    "modernbert": ("ModernBertConfig", "ModernBertForMaskedLM", dict(
        vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=128, local_attention=2 * WINDOW,
        global_attn_every_n_layers=2, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        cls_token_id=2, sep_token_id=3, mask_token_id=4)),
    "t5-encoder": ("T5Config", "T5EncoderModel", dict(
        vocab_size=None, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=1)),
}
SEQ2SEQ = {
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(
        vocab_size=None, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=1, eos_token_id=3, decoder_start_token_id=1)),
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(
        vocab_size=None, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=2,
        eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None)),
}
# families whose attention goes through transformers' attention interface (store="qk" works)
NO_QK = {"falcon", "bloom", "deberta-v2", "t5-encoder"}
CAUSAL = {"llama", "llama-base", "qwen2-sliding", "qwen2-classifier", "qwen3", "mistral-window",
          "gemma2-softcap", "gemma3", "gemma3-multimodal", "phi3", "gpt-neox", "opt", "gpt-j",
          "falcon", "bloom", "gpt2"}
# layers whose mask is more than the causal future / nothing: name → layers with a window
WINDOWED = {"qwen2-sliding": [0, 2], "mistral-window": [0, 1], "gemma2-softcap": [0],
            "gemma3": [0, 2], "gemma3-multimodal": [0], "modernbert": [1]}


def build(name: str, tok: Any, *, seed: int = 0, dtype: Any = None) -> Any:
    import torch
    import transformers

    specs = {**SPECS, **SEQ2SEQ}
    if name == "gemma3-multimodal":
        return _gemma3_multimodal(tok, seed)
    cfg_name, cls_name, kwargs = specs[name]
    kwargs = dict(kwargs, vocab_size=len(tok))
    cfg = getattr(transformers, cfg_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)._from_config(cfg, attn_implementation="eager")
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _gemma3_multimodal(tok: Any, seed: int) -> Any:
    """How real Gemma 3 checkpoints are saved: the text model inside a vision-language
    wrapper (a tiny SigLIP tower that a text-only input never touches)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    text = Gemma3TextConfig(**_llama_like(vocab_size=len(tok), head_dim=8,
                                          sliding_window=WINDOW, query_pre_attn_scalar=8,
                                          layer_types=["sliding_attention", "full_attention"]))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                       image_token_index=len(tok) - 1, boi_token_index=len(tok) - 2,
                       eoi_token_index=len(tok) - 3)
    torch.manual_seed(seed)
    return Gemma3ForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
