"""Captured site outputs equal the same block outputs recomputed by hand; hooks never outlive the pass."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from torch.nn import functional as F

from layerlake.core.layouts import PRESETS
from layerlake.etl import capture, layouts, sites
from layerlake.etl.extract import capture_targets

ALL = ("attn_out", "mlp_out", "resid_post", "ov")


neox = tiny_models.neox
llama = tiny_models.llama


IDS = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(7))
# Several positions per sequence, out of order, to check rows land in probe order.
POSITIONS = torch.tensor([[4, 8], [0, 3], [2, 8], [0, 8], [1, 0], [3, 5], [4, 2], [2, 1]])


def _at(t: torch.Tensor) -> torch.Tensor:
    return t[POSITIONS[:, 0], POSITIONS[:, 1]].double()


def _run(model, batch_size=None, gradients=False):
    return capture.run_pass(
        model,
        IDS,
        POSITIONS,
        capture_targets(layouts.fit(model), ALL),
        gradients=gradients,
        batch_size=batch_size,
    )[0]


def test_gpt_neox_sites_equal_hand_computation():
    model = neox()
    got = _run(model)
    with torch.no_grad():
        hidden = model(IDS, output_hidden_states=True).hidden_states
        for i, block in enumerate(model.gpt_neox.layers):
            h_in = hidden[i]
            mlp = block.mlp
            ln2 = F.layer_norm(
                h_in,
                (16,),
                block.post_attention_layernorm.weight,
                block.post_attention_layernorm.bias,
                block.post_attention_layernorm.eps,
            )
            mlp_out = F.linear(
                F.gelu(F.linear(ln2, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)),
                mlp.dense_4h_to_h.weight,
                mlp.dense_4h_to_h.bias,
            )
            ln1 = F.layer_norm(
                h_in,
                (16,),
                block.input_layernorm.weight,
                block.input_layernorm.bias,
                block.input_layernorm.eps,
            )
            qkv = ln1 @ block.attention.query_key_value.weight.T + block.attention.query_key_value.bias
            torch.testing.assert_close(got[(i, "mlp_out")], _at(mlp_out), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[(i, "value")], _at(qkv), rtol=1e-5, atol=1e-5)
            if i + 1 < len(model.gpt_neox.layers):
                resid = _at(hidden[i + 1])
                torch.testing.assert_close(got[(i, "resid_post")], resid, rtol=1e-5, atol=1e-5)
            else:  # the last hidden state is taken after the final layer norm
                resid = got[(i, "resid_post")]
                normed = model.gpt_neox.final_layer_norm(resid.float()).double()
                torch.testing.assert_close(normed, _at(hidden[i + 1]), rtol=1e-5, atol=1e-5)
            # parallel residual: h_out = h_in + attn_out + mlp_out
            torch.testing.assert_close(
                got[(i, "attn_out")], resid - _at(h_in) - _at(mlp_out), rtol=1e-4, atol=1e-4
            )


def test_llama_sites_equal_hand_computation():
    model = llama()
    got = _run(model)
    with torch.no_grad():
        hidden = model(IDS, output_hidden_states=True).hidden_states
        for i, block in enumerate(model.model.layers[:-1]):
            h_in, h_out = hidden[i], hidden[i + 1]
            torch.testing.assert_close(got[(i, "resid_post")], _at(h_out), rtol=1e-5, atol=1e-5)
            v = block.input_layernorm(h_in) @ block.self_attn.v_proj.weight.T
            torch.testing.assert_close(got[(i, "value")], _at(v), rtol=1e-5, atol=1e-5)
            # sequential residual: h_mid = h_in + attn_out; h_out = h_mid + down(silu(gate(x)) * up(x))
            h_mid = _at(h_in) + got[(i, "attn_out")]
            x = block.post_attention_layernorm(h_mid.float())
            mlp = block.mlp
            mlp_out = (
                F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
            ) @ mlp.down_proj.weight.T
            torch.testing.assert_close(got[(i, "mlp_out")], mlp_out.double(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(_at(h_out), h_mid + got[(i, "mlp_out")], rtol=1e-4, atol=1e-4)


def test_chunked_pass_equals_single_pass():
    model = neox()
    whole, chunked = _run(model), _run(model, batch_size=2)
    assert whole.keys() == chunked.keys()
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-6)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_an_exception_inside_the_pass():
    model = neox()
    assert _hook_count(model) == 0

    def boom(module, args):
        raise RuntimeError("boom inside the pass")

    trap = model.gpt_neox.layers[1].mlp.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        _run(model)
    trap.remove()
    assert _hook_count(model) == 0
    _run(model)  # and the model still works
    assert _hook_count(model) == 0


@pytest.mark.parametrize("gradients", [False, True])
def test_grad_mode_follows_gradients_option(gradients: bool):
    model = neox()
    seen = []
    handle = model.gpt_neox.layers[0].register_forward_hook(
        lambda m, a, o: seen.append(torch.is_grad_enabled())
    )
    try:
        _run(model, gradients=gradients)
    finally:
        handle.remove()
    assert seen == [gradients]
    has_grad = model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.grad is not None
    assert has_grad == gradients


def test_split_value_true_v_and_paper_slice():
    fam, shape = PRESETS["gpt_neox"], sites.Shape(1, 6, 2, 2, 3)
    out = torch.arange(18.0).reshape(1, 18)  # fused row: head0 [q0 q0 q0 k0 k0 k0 v0 v0 v0] head1 [...]
    true_v = sites.split_value_output(out, fam, shape, "true_v")
    paper = sites.split_value_output(out, fam, shape, "paper_last_third")
    assert true_v.tolist() == [[[6.0, 7.0, 8.0], [15.0, 16.0, 17.0]]]
    assert paper.tolist() == [[[12.0, 13.0, 14.0], [15.0, 16.0, 17.0]]]  # k and v of head 1
    one = sites.Shape(1, 3, 1, 1, 3)
    row = out[:, :9]
    assert torch.equal(
        sites.split_value_output(row, fam, one, "true_v"),
        sites.split_value_output(row, fam, one, "paper_last_third"),
    )


def test_gpt2_sites_equal_hand_computation():
    """GPT-2: sequential residual, Conv1D maps (x @ W + b with W stored (in, out)), c_attn's output
    stacked [Q | K | V]."""
    model = tiny_models.gpt2()
    got = _run(model)
    with torch.no_grad():
        hidden = model(IDS, output_hidden_states=True).hidden_states
        for i, block in enumerate(model.transformer.h[:-1]):
            h_in, h_out = hidden[i], hidden[i + 1]
            qkv = block.ln_1(h_in) @ block.attn.c_attn.weight + block.attn.c_attn.bias
            torch.testing.assert_close(got[(i, "value")], _at(qkv), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[(i, "resid_post")], _at(h_out), rtol=1e-5, atol=1e-5)
            h_mid = _at(h_in) + got[(i, "attn_out")]
            x = block.ln_2(h_mid.float())
            mlp = block.mlp
            mlp_out = mlp.act(x @ mlp.c_fc.weight + mlp.c_fc.bias) @ mlp.c_proj.weight + mlp.c_proj.bias
            torch.testing.assert_close(got[(i, "mlp_out")], mlp_out.double(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(_at(h_out), h_mid + got[(i, "mlp_out")], rtol=1e-4, atol=1e-4)


FAMILY_MODELS = {
    "gpt_neox": lambda: neox(n_heads=4),
    "llama": llama,
    "qwen2": lambda: tiny_models.llama_variant("qwen2"),
    "mistral": lambda: tiny_models.llama_variant("mistral"),
    "olmo": lambda: tiny_models.llama_variant("olmo"),
    "olmo2": lambda: tiny_models.llama_variant("olmo2"),
    "gpt2": tiny_models.gpt2,
}


def hand_v_and_w_o(model, block, raw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """V and W_O of each query head by index arithmetic on the raw value output and the stored weight,
    written per layout without the code under test: (n, d_head) and (d_model, d_head) per head."""
    kind = model.config.model_type
    shape = layouts.fit(model).shape
    h, dh, d = shape.n_heads, shape.d_head, shape.d_model
    if kind == "gpt_neox":  # rows [q_0 k_0 v_0 q_1 k_1 v_1 ...], each d_head wide
        v = [raw[:, (3 * i + 2) * dh : (3 * i + 3) * dh] for i in range(h)]
        w_o = block.attention.dense.weight
    elif kind == "gpt2":  # columns [Q | K | V]; W_O stored (in, out)
        v = [raw[:, 2 * d + i * dh : 2 * d + (i + 1) * dh] for i in range(h)]
        w_o = block.attn.c_proj.weight.T
    else:  # llama layout: query head i reads kv head i // (heads per kv head)
        group = h // model.config.num_key_value_heads
        v = [raw[:, (i // group) * dh : (i // group + 1) * dh] for i in range(h)]
        w_o = block.self_attn.o_proj.weight
    w_o = w_o.detach().double()
    return v, [w_o[:, i * dh : (i + 1) * dh] for i in range(h)]


@pytest.mark.parametrize("kind", sorted(FAMILY_MODELS))
def test_every_family_gives_v_per_head_and_ov_of_the_hand_computation(kind):
    model = FAMILY_MODELS[kind]()
    fitted = layouts.fit(model)
    family, shape = fitted.layout, fitted.shape
    assert model.config.model_type in family.model_types
    got = _run(model)
    for i, fitted_block in enumerate(fitted.blocks):
        raw = got[(i, "value")]
        v = sites.split_value_output(raw, family, shape, "true_v")
        w_o = fitted_block.read("dense").double()
        whole, per_head = sites.ov_activations(v, w_o)
        hand_v, hand_w_o = hand_v_and_w_o(model, fitted_block.module, raw)
        for h in range(shape.n_heads):
            torch.testing.assert_close(v[:, h], hand_v[h])
            torch.testing.assert_close(per_head[h], hand_v[h] @ hand_w_o[h].T)
        torch.testing.assert_close(whole, sum(hv @ hw.T for hv, hw in zip(hand_v, hand_w_o, strict=True)))


def test_gpt2_qkv_matrices_are_the_stacked_thirds_of_c_attn_transposed():
    model = tiny_models.gpt2()
    fitted = layouts.fit(model)
    got = sites.block_matrices(fitted.blocks[0], fitted.layout, fitted.shape, "true_v", "weight")
    block = fitted.blocks[0].module
    w = block.attn.c_attn.weight.detach()  # (d_model, 3 d_model): x @ w
    for j, name in enumerate(("query", "key", "value")):
        torch.testing.assert_close(got[(name, None)][0], w[:, j * 16 : (j + 1) * 16].T)
    torch.testing.assert_close(got[("dense_h_to_4h", None)][0], block.mlp.c_fc.weight.detach().T)
    a, b = got[("ov", 1)]  # head 1: W_O[:, 4:8] @ W_V[4:8]
    torch.testing.assert_close(a @ b, block.attn.c_proj.weight.detach().T[:, 4:8] @ w[:, 36:40].T)


def test_an_unknown_family_is_named_with_the_known_ones_and_the_registry():
    from layerlake.etl.errors import ExtractionError

    with pytest.raises(ExtractionError, match="model type 'bloom' has no site layout") as error:
        layouts.layout_for_type("bloom")
    assert "gpt2 (gpt2)" in error.value.message and "qwen2" in error.value.message
    assert "docs/families.md" in error.value.fix
