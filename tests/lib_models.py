"""Faithful re-implementations of the module naming (and attention) of litGPT's GPT (0.5.13), OLMo-core's
Transformer (3.0) and torchtitan's LLaMA 3 (0.3.0), for the layout presets' tests: none of the three installs
beside this project's transformers (each pins huggingface-hub below 2, through datasets or cached-path, where
transformers 5 needs >= 2.4; torchtitan's models also import triton). Names, shapes, the QKV split, grouped
queries, rotary embeddings and the call each library makes to ``scaled_dot_product_attention`` are theirs;
initialisation and training code are left out.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, heads, T, hs) over the whole head (half-split, base 10000)."""
    t, hs = x.shape[-2], x.shape[-1]
    freqs = 1.0 / (10000 ** (torch.arange(0, hs, 2, dtype=x.dtype) / hs))
    angles = torch.outer(torch.arange(t, dtype=x.dtype), freqs)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, 1e-6)


# --- litgpt.model.GPT ------------------------------------------------------------------------------------


class LitAttention(nn.Module):
    """litgpt's CausalSelfAttention: ``qkv`` rows [Q | K | V] (n_head + 2 n_query_groups heads), ``proj``."""

    def __init__(self, config) -> None:
        super().__init__()
        hs, self.config = config.head_size, config
        self.qkv = nn.Linear(
            config.n_embd, (config.n_head + 2 * config.n_query_groups) * hs, bias=config.bias
        )
        self.proj = nn.Linear(hs * config.n_head, config.n_embd, bias=config.bias)

    def forward(self, x):
        c = self.config
        b, t, _ = x.shape
        qkv = self.qkv(x)
        q_size, kv_size = c.n_head * c.head_size, c.n_query_groups * c.head_size
        q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(b, t, c.n_head, c.head_size).transpose(1, 2)
        k = k.view(b, t, c.n_query_groups, c.head_size).transpose(1, 2)
        v = v.view(b, t, c.n_query_groups, c.head_size).transpose(1, 2)
        q, k = rope(q), rope(k)
        if c.n_query_groups != c.n_head:  # litgpt repeats k and v for the query heads of each group
            q_per_kv = c.n_head // c.n_query_groups
            k, v = k.repeat_interleave(q_per_kv, dim=1), v.repeat_interleave(q_per_kv, dim=1)
        y = self.scaled_dot_product_attention(q, k, v)
        return self.proj(y.reshape(b, t, -1))

    def scaled_dot_product_attention(self, q, k, v):
        scale = 1.0 / (self.config.head_size**0.5)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=0.0, scale=scale, is_causal=True
        )
        return y.transpose(1, 2)


class LLaMAMLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


class LitBlock(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.norm_1, self.attn = RMSNorm(config.n_embd), LitAttention(config)
        self.norm_2, self.mlp = RMSNorm(config.n_embd), LLaMAMLP(config)

    def forward(self, x):
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class LitGPT(nn.Module):
    def __init__(self, n_layer=2, n_embd=16, n_head=4, n_query_groups=2, vocab_size=40, bias=False) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_query_groups=n_query_groups, bias=bias,
            head_size=n_embd // n_head, intermediate_size=3 * n_embd, padded_vocab_size=vocab_size,
        )  # fmt: skip
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                h=nn.ModuleList(LitBlock(self.config) for _ in range(n_layer)),
                ln_f=RMSNorm(n_embd),
            )
        )

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# --- olmo_core.nn.transformer.Transformer -----------------------------------------------------------------


class OlmoAttention(nn.Module):
    """OLMo-core's Attention: w_q, w_k, w_v, w_out; n_heads, n_kv_heads; SDPA with enable_gqa."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.w_q = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.w_k = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.w_v = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.w_out = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.w_q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.w_k(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.w_v(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q), rope(k)
        att = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.w_out(att.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` (OLMo-core's FeedForward and torchtitan's)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class OlmoBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.attention = OlmoAttention(d_model, n_heads, n_kv_heads)
        self.attention_norm = RMSNorm(d_model)
        self.feed_forward = SwiGLU(d_model, 3 * d_model)
        self.feed_forward_norm = RMSNorm(d_model)

    def forward(self, x):  # OLMo 2's reordered norm: the sublayer's output is normed before the residual
        h = x + self.attention_norm(self.attention(x))
        return h + self.feed_forward_norm(self.feed_forward(h))


class OlmoCoreTransformer(nn.Module):
    def __init__(self, d_model=16, vocab_size=40, n_layers=2, n_heads=4, n_kv_heads=2) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleDict(
            {str(i): OlmoBlock(d_model, n_heads, n_kv_heads) for i in range(n_layers)}
        )
        self.lm_head = nn.Sequential()
        self.lm_head.add_module("norm", RMSNorm(d_model))
        self.lm_head.add_module("w_out", nn.Linear(d_model, vocab_size, bias=False))

    def forward(self, input_ids):
        h = self.embeddings(input_ids)
        for block in self.blocks.values():
            h = block(h)
        return self.lm_head(h)


# --- torchtitan.models.llama3 ----------------------------------------------------------------------------


class QKVLinear(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=False)


class ScaledDotProductAttention(nn.Module):
    """torchtitan's inner attention: (B, L, N, H) in, SDPA on (B, N, L, H), (B, L, N, H) out."""

    def forward(self, q, k, v, scale=None, enable_gqa=False):
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa
        ).transpose(1, 2)


class TitanAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.enable_gqa = n_heads > n_kv_heads
        self.qkv_linear = QKVLinear(dim, n_heads, n_kv_heads, self.head_dim)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.inner_attention = ScaledDotProductAttention()

    def forward(self, x):
        b, t, _ = x.shape
        q = self.qkv_linear.wq(x).view(b, t, -1, self.head_dim)
        k = self.qkv_linear.wk(x).view(b, t, -1, self.head_dim)
        v = self.qkv_linear.wv(x).view(b, t, -1, self.head_dim)
        q, k = rope(q.transpose(1, 2)).transpose(1, 2), rope(k.transpose(1, 2)).transpose(1, 2)
        out = self.inner_attention(q, k, v, enable_gqa=self.enable_gqa).contiguous()
        return self.wo(out.flatten(2))


class TitanBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.attention = TitanAttention(dim, n_heads, n_kv_heads)
        self.feed_forward = SwiGLU(dim, 3 * dim)
        self.attention_norm, self.ffn_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Llama3Model(nn.Module):
    def __init__(self, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleDict({str(i): TitanBlock(dim, n_heads, n_kv_heads) for i in range(n_layers)})
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.lm_head(self.norm(h))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()
