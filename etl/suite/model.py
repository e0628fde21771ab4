"""Pythia's architecture, scaled down: a ``GPTNeoXConfig`` from one ``ModelSpec`` of the suite."""

from __future__ import annotations

from layerlake.conf.schema import ModelSpec, TrainConfig
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


def new_model(spec: ModelSpec, train: TrainConfig, seed: int):
    """A freshly initialised ``GPTNeoXForCausalLM`` (step 0): the same ``seed`` gives the same weights."""
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(neox_config(spec, train))
