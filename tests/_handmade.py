"""A real GPT-2 (transformers' GPT2LMHeadModel built from a config) whose attention is set by
hand, shared by the census tests.

The residual stream holds one-hot blocks (position, token, previous token), so every LayerNorm
sees vectors with the same mean and spread and acts as a fixed scale. Queries and keys are
tables indexed by position or token, with logit gaps of ≥ 30, so softmax is one-hot to ~1e-13.

layer 0: h0 previous token (and writes the previous token into the residual), h1 self,
         h2 first token, h3 uniform.
layer 1: h0 induction (query = own token, key = the previous token written by layer 0 h0),
         h1 same token (itself and earlier copies), h2 two back, h3 three back.

Its vocabulary is WORDS (w0 … w27) split on whitespace, with <s> before every text; at most
P − 1 = 63 words per text.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(28)]
SPECIAL = ["<s>", "</s>", "<unk>", "<pad>"]
V = len(SPECIAL) + len(WORDS)  # 32 ids: exactly one head's width
P = 64  # positions
D = P + 2 * V  # residual: [position | token | previous token]
HEADS, HD = 4, D // 4
S = 30.0  # logit gap
A_TOK, B_POS, C_PREV = 1.0, 1.0, 1.0


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def _sigma(*values: float, eps: float = 1e-5) -> float:
    """LayerNorm's spread for a D-vector holding `values` once each and zeros elsewhere."""
    mu = sum(values) / D
    var = sum(v * v for v in values) / D - mu * mu
    return math.sqrt(var + eps), mu


def build_handmade(path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tokenizer()
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=D, n_layer=2, n_head=HEADS, n_inner=4,
                     bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg).eval()
    pos = np.arange(P, dtype=np.float64)
    root = math.sqrt(HD)  # GPT-2 divides logits by sqrt(head_dim): multiply it back in
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        tr.wte.weight[torch.arange(V), P + torch.arange(V)] = A_TOK
        tr.wpe.weight[torch.arange(P), torch.arange(P)] = B_POS
        for layer, vals in ((0, (A_TOK, B_POS)), (1, (A_TOK, B_POS, C_PREV))):
            blk = tr.h[layer]
            sigma, mu = _sigma(*vals)
            # γ = 1, β = μ/σ: LayerNorm(x) = x/σ for every position.
            for ln in (blk.ln_1, blk.ln_2):
                ln.weight.fill_(1.0)
                ln.bias.fill_(mu / sigma)
            w = np.zeros((D, 3 * D))  # Conv1D: [in, q | k | v]

            def by_position(h: int, q_tab: np.ndarray, k_tab: np.ndarray, w=w, sigma=sigma):
                # q_tab [position, r], k_tab [position, r]: logit(i, j) = q_tab[i]·k_tab[j]
                r = q_tab.shape[1]
                w[:P, h * HD:h * HD + r] = q_tab * sigma / B_POS * root
                w[:P, D + h * HD:D + h * HD + r] = k_tab * sigma / B_POS

            def offset_head(h: int, back: int) -> None:
                # −S (j − (i − back))², dropping the part that depends on i alone
                by_position(h, np.stack([2 * S * (pos - back), -S * np.ones(P)], 1),
                            np.stack([pos, pos ** 2], 1))

            ids = np.arange(V)
            if layer == 0:
                offset_head(0, 1)
                offset_head(1, 0)
                first = np.zeros((P, 1))
                first[0] = 1.0
                by_position(2, S * np.ones((P, 1)), first)
                # head 3: zero query and key → uniform over the allowed keys
                # head 0's value: the token, one-hot, written to the previous-token block
                w[P + ids, 2 * D + ids] = C_PREV * sigma / A_TOK
                proj = np.zeros((D, D))
                proj[ids, P + V + ids] = 1.0
                blk.attn.c_proj.weight.copy_(torch.tensor(proj))
            else:
                # head 0 induction: own token (query) meets the previous token (key)
                w[P + ids, 0 * HD + ids] = S * sigma / A_TOK * root
                w[P + V + ids, D + 0 * HD + ids] = sigma / C_PREV
                # head 1 same token: own token meets the key's token
                w[P + ids, 1 * HD + ids] = S * sigma / A_TOK * root
                w[P + ids, D + 1 * HD + ids] = sigma / A_TOK
                offset_head(2, 2)
                offset_head(3, 3)
            blk.attn.c_attn.weight.copy_(torch.tensor(w))
        tr.ln_f.weight.fill_(1.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
