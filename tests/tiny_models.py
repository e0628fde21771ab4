"""Tiny random transformers models for unit tests (real classes, random weights, no checkpoint)."""

from __future__ import annotations

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and biases of a useful size (HF init zeroes biases, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 else 0)
            )
    return model.eval()


def neox(
    n_heads: int = 2, seed: int = 0, hidden_size: int = 16, intermediate_size: int = 32
) -> GPTNeoXForCausalLM:
    cfg = GPTNeoXConfig(
        vocab_size=40,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=n_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=32,
    )
    return randomise(GPTNeoXForCausalLM(cfg), seed)


def llama(seed: int = 0) -> LlamaForCausalLM:
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
    )
    return randomise(LlamaForCausalLM(cfg), seed)
