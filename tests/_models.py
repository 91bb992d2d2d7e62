"""Tiny real models for tests, built from configs on the spot (no download).

The tokenizer is a byte-level BPE trained here on a small corpus, so ``Ġ`` and ``Ċ`` tokens
are real, wrapped as a transformers fast tokenizer. Extra vocabulary (hostile strings, say)
can be added as plain tokens.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The cat that sat on the mat was black.",
    "The dog that ran in the park was brown.",
    "The keys to the cabinet are on the table.",
    "A quick brown fox jumps over the lazy dog.\nNew lines\tand tabs too.",
    "When Mary and John went to the store, John gave a drink to Mary.",
] * 20


def train_tokenizer(extra_tokens: list[str] | None = None, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>", "<s>", "</s>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        mask_token="<mask>",
    )
    if extra_tokens:
        fast.add_tokens(extra_tokens)
    return fast


def _save(model, tok, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_gpt2(path: Path, *, layers: int = 2, heads: int = 2, n_positions: int = 64,
               extra_tokens: list[str] | None = None, seed: int = 0,
               n_embd: int | None = None) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train_tokenizer(extra_tokens)
    torch.manual_seed(seed)
    n_embd = n_embd or 16 * heads  # divisible by the number of heads
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=layers,
                     n_head=heads, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _save(GPT2LMHeadModel(cfg).eval(), tok, path)


def build_bert(path: Path, *, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tok = train_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=64,
                     max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    return _save(BertForMaskedLM(cfg).eval(), tok, path)


def build_t5(path: Path, *, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = train_tokenizer()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=layers,
                   num_decoder_layers=layers, num_heads=heads, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    return _save(T5ForConditionalGeneration(cfg).eval(), tok, path)


def build_bart(path: Path, *, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    tok = train_tokenizer()
    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=layers,
                     decoder_layers=layers, encoder_attention_heads=heads,
                     decoder_attention_heads=heads, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None)
    return _save(BartForConditionalGeneration(cfg).eval(), tok, path)
