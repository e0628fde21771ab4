"""Tiny random transformers models for unit tests (real classes, random weights, no checkpoint)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)


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


def gpt2(seed: int = 0, n_heads: int = 4) -> GPT2LMHeadModel:
    """Conv1D weights stored (in, out); c_attn's output stacked [Q | K | V]."""
    cfg = GPT2Config(
        vocab_size=40, n_embd=16, n_layer=2, n_head=n_heads, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return randomise(GPT2LMHeadModel(cfg), seed)


def llama_variant(kind: str, seed: int = 0) -> torch.nn.Module:
    """A LLaMA-layout model of another type: grouped-query attention (4 query heads on 2 kv heads)
    with Qwen2's q/k/v biases, Mistral's or OLMo's classes, or OLMo 2's QK-norm."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Olmo2Config,
        Olmo2ForCausalLM,
        OlmoConfig,
        OlmoForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )  # fmt: skip

    classes = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
        "olmo": (OlmoConfig, OlmoForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM),
    }  # fmt: skip
    config_class, model_class = classes[kind]
    cfg = config_class(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=24, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return randomise(model_class(cfg), seed)
