"""The embedded suite's models, scaled down: a transformers config from one ``ModelSpec`` of the suite,
for each ``Architecture``: Pythia's GPT-NeoX, a LLaMA-style model with grouped-query attention, GPT-2."""

from __future__ import annotations

from layerlake.conf.schema import ModelSpec, TrainConfig
from layerlake.core.choices import Architecture
from layerlake.etl.errors import SuiteError

ROTARY_FRACTION = 0.25  # Pythia rotates the first quarter of each head's dimensions


def neox_config(spec: ModelSpec, train: TrainConfig):
    """GPT-NeoX as Pythia uses it: parallel residual, rotary on 25% of each head, untied embeddings.

    transformers 5 moved ``rotary_pct`` into ``rope_parameters["partial_rotary_factor"]``; setting it
    there is what makes ``attention.rotary_ndims == head_size // 4``.
    """
    from transformers import GPTNeoXConfig

    if spec.d_model % spec.n_heads:
        raise SuiteError(
            f"model {spec.name!r}: d_model={spec.d_model} is not divisible by n_heads={spec.n_heads}",
            fix="pick n_heads dividing d_model in the suite config",
        )
    head_size = spec.d_model // spec.n_heads
    if (head_size * ROTARY_FRACTION) % 2:
        raise SuiteError(
            f"model {spec.name!r}: head size {head_size} gives an odd rotary width {head_size * ROTARY_FRACTION:g}",
            fix="pick d_model / n_heads divisible by 8 (rotary pairs dimensions on a quarter of each head)",
        )
    return GPTNeoXConfig(
        vocab_size=train.vocab_size,
        hidden_size=spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        intermediate_size=spec.d_mlp or 4 * spec.d_model,
        max_position_embeddings=max(2 * train.seq_len, 128),
        use_parallel_residual=True,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": ROTARY_FRACTION,
        },
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def llama_config(spec: ModelSpec, train: TrainConfig):
    """LLaMA-style: RMSNorm, SwiGLU MLP, rotary on every dimension, ``n_kv_heads`` key/value heads
    shared by groups of query heads, untied embeddings."""
    from transformers import LlamaConfig

    n_kv = spec.n_kv_heads or spec.n_heads
    if spec.n_heads % n_kv:
        raise SuiteError(
            f"model {spec.name!r}: n_heads={spec.n_heads} is not a multiple of n_kv_heads={n_kv}",
            fix="pick n_kv_heads dividing n_heads (each key/value head serves a group of query heads)",
        )
    return LlamaConfig(
        vocab_size=train.vocab_size,
        hidden_size=spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=n_kv,
        intermediate_size=spec.d_mlp or 4 * spec.d_model,
        max_position_embeddings=max(2 * train.seq_len, 128),
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def gpt2_config(spec: ModelSpec, train: TrainConfig):
    """GPT-2: learned positions, LayerNorm before each block, GELU MLP, tied embeddings, no dropout."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=train.vocab_size,
        n_embd=spec.d_model,
        n_layer=spec.n_layers,
        n_head=spec.n_heads,
        n_inner=spec.d_mlp or 4 * spec.d_model,
        n_positions=max(2 * train.seq_len, 128),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


CONFIGS = {
    Architecture.gpt_neox: neox_config,
    Architecture.llama: llama_config,
    Architecture.gpt2: gpt2_config,
}


def new_model(spec: ModelSpec, train: TrainConfig, seed: int):
    """A freshly initialised model of ``spec.architecture`` (step 0): the same ``seed`` gives the same
    weights."""
    import torch
    from transformers import AutoModelForCausalLM

    if spec.d_model % spec.n_heads:
        raise SuiteError(
            f"model {spec.name!r}: d_model={spec.d_model} is not divisible by n_heads={spec.n_heads}",
            fix="pick n_heads dividing d_model in the suite config",
        )
    if spec.n_kv_heads is not None and spec.architecture != Architecture.llama:
        raise SuiteError(
            f"model {spec.name!r}: n_kv_heads is set but {spec.architecture} has one key/value head per query head",
            fix="remove n_kv_heads, or set architecture: llama",
        )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[spec.architecture](spec, train))
