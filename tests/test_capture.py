"""Captured site outputs equal the same block outputs recomputed by hand; hooks never outlive the pass."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from torch.nn import functional as F

from layerlake.etl import capture, sites
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
    family = sites.family_of(model)
    return capture.run_pass(
        model, IDS, POSITIONS, capture_targets(model, family, ALL), gradients=gradients, batch_size=batch_size
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
    fam, shape = sites.FAMILIES["gpt_neox"], sites.Shape(1, 6, 2, 2, 3)
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
