"""etl.sites on real tiny models: the gradient of the OV product, and what the paper's V slice holds."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models
import torch

from layerlake.core.layouts import PRESETS
from layerlake.etl import capture, layouts, metrics, sites

IDS = torch.randint(0, 40, (4, 10), generator=torch.Generator().manual_seed(3))


def backward(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float64 with every weight's gradient of the mean next-token loss (as extraction takes it)."""
    model = model.double()
    model.zero_grad()
    loss = capture.next_token_loss_sum(model(IDS).logits, IDS) / (IDS.shape[0] * (IDS.shape[1] - 1))
    loss.backward()
    return model


def ov_modules(model: torch.nn.Module, layer: int):
    fitted = layouts.fit(model)
    block = fitted.blocks[layer]
    value, dense = block.owner(block.value_matrix), block.owner("dense")
    return block, fitted.layout, fitted.shape, value, dense


def svd(m: np.ndarray) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False)


def assert_same_spectrum(got: torch.Tensor, matrix: np.ndarray, rel: float = 1e-8) -> None:
    want = svd(matrix)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=rel * want[0])


# -- 21: ov_product_rule is the chain rule --------------------------------------------------------


def dense_chain_rule(model: torch.nn.Module, layer: int, v_slice: str):
    """``{head: gO W_V + W_O gV}`` (head None: the whole layer) by index arithmetic on the raw weights
    and gradients, and the paper's ``gO gV`` beside it."""
    _, family, shape, value, dense = ov_modules(model, layer)
    h, dh = shape.n_heads, shape.d_head
    flip = (lambda m: m.T) if family.conv1d else (lambda m: m)  # GPT-2's Conv1D stores (in, out)
    w_o, g_o = flip(dense.weight.detach().numpy()), flip(dense.weight.grad.numpy())
    w_v_raw, g_v_raw = flip(value.weight.detach().numpy()), flip(value.weight.grad.numpy())
    if family.conv1d:  # GPT-2: rows [Q | K | V], V's rows head by head (the paper's slice is V itself)
        start = [2 * h * dh + i * dh for i in range(h)]
    elif family.fused_qkv:  # rows [head][q|k|v][d_head]; the paper's slice is the last H*dh rows
        start = [
            2 * h * dh + i * dh if v_slice == "paper_last_third" else i * 3 * dh + 2 * dh for i in range(h)
        ]
    else:  # llama: head i reads kv head i // group
        start = [(i // shape.group) * dh for i in range(h)]
    v_rows = np.concatenate([np.arange(s, s + dh) for s in start])
    w_v, g_v = w_v_raw[v_rows], g_v_raw[v_rows]
    chain, paper = {None: g_o @ w_v + w_o @ g_v}, {None: g_o @ g_v}
    for i in range(h):
        cols = slice(i * dh, (i + 1) * dh)
        chain[i] = g_o[:, cols] @ w_v[cols] + w_o[:, cols] @ g_v[cols]
        paper[i] = g_o[:, cols] @ g_v[cols]
    return chain, paper


MODELS = {
    # hidden 12: with 3 or 4 heads 2 * d_head < 12, so the per-head spectra take the QR path
    "neox-1": lambda: tiny_models.neox(1, 0, hidden_size=12, intermediate_size=20),
    "neox-2": lambda: tiny_models.neox(2, 1, hidden_size=12, intermediate_size=20),
    "neox-3": lambda: tiny_models.neox(3, 2, hidden_size=12, intermediate_size=20),
    "neox-4": lambda: tiny_models.neox(4, 3, hidden_size=12, intermediate_size=20),
    "llama-gqa": lambda: tiny_models.llama(4),
    "qwen2-gqa-biases": lambda: tiny_models.llama_variant("qwen2", 5),
    "gpt2": lambda: tiny_models.gpt2(6),
}


CHAIN_CASES = [(name, "true_v") for name in MODELS] + [
    ("neox-2", "paper_last_third"),
    ("neox-4", "paper_last_third"),
]


@pytest.mark.parametrize(("name", "v_slice"), CHAIN_CASES)
def test_ov_product_rule_spectra_are_those_of_the_chain_rule(name, v_slice):
    model = backward(MODELS[name]())
    for layer in range(2):
        block, family, shape, _, _ = ov_modules(model, layer)
        factors = sites.block_matrices(block, family, shape, v_slice, "grad")
        chain, paper = dense_chain_rule(model, layer, v_slice)
        assert {h for (m, h) in factors if m == "ov_product_rule"} == set(chain)
        assert not {h for (m, h) in factors if m == "ov"}  # the ov gradient comes from the pass's hooks
        for head, matrix in chain.items():
            got = metrics.product_svdvals(*factors[("ov_product_rule", head)])
            assert_same_spectrum(got, matrix)
            # The old definition, the product of the two gradients, is another matrix.
            old = svd(paper[head])
            assert np.abs(got.numpy() - old).max() > 1e-3 * got[0].item(), (name, layer, head)


@pytest.mark.parametrize("name", ["neox-3", "llama-gqa"])
def test_ov_product_rule_is_torch_autograd_derivative_of_the_product_along_the_gradients(name):
    """Autograd's Jacobian-vector product of (W_O, W_V) -> W_O @ W_V in the direction (gO, gV) is the stored matrix;
    and since the product is quadratic in t, a central difference of OV along the gradient is exact."""
    model = backward(MODELS[name]())
    block, family, shape, value, dense = ov_modules(model, 1)
    weights = sites.ov_operands(block, family, shape, "true_v", "weight")
    grads = sites.ov_operands(block, family, shape, "true_v", "grad")
    factors = sites.block_matrices(block, family, shape, "true_v", "grad")
    for key, (w_o, w_v) in weights.items():
        g_o, g_v = grads[key]
        _, tangent = torch.autograd.functional.jvp(torch.matmul, (w_o, w_v), (g_o, g_v))
        a, b = factors[("ov_product_rule", key[1])]
        torch.testing.assert_close(a @ b, tangent, rtol=1e-12, atol=1e-12 * tangent.abs().max().item())
        t = 1e-3
        central = ((w_o + t * g_o) @ (w_v + t * g_v) - (w_o - t * g_o) @ (w_v - t * g_v)) / (2 * t)
        torch.testing.assert_close(central, tangent, rtol=1e-9, atol=1e-9 * tangent.abs().max().item())
        assert_same_spectrum(metrics.product_svdvals(a, b), tangent.numpy())


def test_ov_product_rule_is_linear_in_the_gradient():
    """Scaling every gradient by c scales the gradient-OV spectra by c (the old gO @ gV scaled by c^2)."""
    model = backward(MODELS["neox-4"]())
    block, family, shape, _, _ = ov_modules(model, 0)
    before = {
        k: metrics.product_svdvals(a, b)
        for k, (a, b) in sites.block_matrices(block, family, shape, "true_v", "grad").items()
    }
    for p in model.parameters():
        p.grad.mul_(10.0)
    after = {
        k: metrics.product_svdvals(a, b)
        for k, (a, b) in sites.block_matrices(block, family, shape, "true_v", "grad").items()
    }
    for key in [("ov_product_rule", None), ("ov_product_rule", 0), ("ov_product_rule", 3), ("dense", None)]:
        torch.testing.assert_close(after[key], 10.0 * before[key], rtol=1e-10, atol=1e-12)


# -- 23: what the paper's "last third" holds --------------------------------------------------------


@pytest.mark.parametrize("n_heads", [1, 2, 3, 4, 6, 8, 12])
def test_paper_slice_pieces_name_what_the_slices_take(n_heads):
    """Label every column of a fused QKV by its piece, as GPT-NeoX lays them out ([head][q|k|v][d_head]),
    slice it the paper's way through split_value_output and split_value_weight, and read the labels back."""
    dh = 3
    family, shape = PRESETS["gpt_neox"], sites.Shape(1, n_heads * dh, n_heads, n_heads, dh)
    names = [f"{part}{head}" for head in range(n_heads) for part in "qkv"]
    # column value = 10 * piece + offset inside the piece
    fused = torch.tensor([10.0 * piece + j for piece in range(3 * n_heads) for j in range(dh)])

    def pieces(heads: torch.Tensor) -> list[str]:  # (H, dh): each row must be one whole piece, in order
        for row in heads:
            assert row.tolist() == [row[0].item() + j for j in range(dh)]
        return [names[int(row[0]) // 10] for row in heads]

    from_output = pieces(sites.split_value_output(fused.reshape(1, -1), family, shape, "paper_last_third")[0])
    weight = fused.reshape(-1, 1).repeat(1, 5)  # a Linear's output features are its weight's rows
    from_weight = pieces(sites.split_value_weight(weight, family, shape, "paper_last_third")[:, :, 0])
    assert from_output == from_weight == sites.paper_slice_pieces(n_heads)
    # the same labels read the true V as v0 .. v(H-1), which the paper's slice is for one head only
    true_v = pieces(sites.split_value_output(fused.reshape(1, -1), family, shape, "true_v")[0])
    assert true_v == [f"v{h}" for h in range(n_heads)]
    assert (from_output == true_v) == (n_heads == 1)
    # q, k and v of the last third of the heads exactly when 3 divides the head count
    last_third = [f"{part}{head}" for head in range(2 * n_heads // 3, n_heads) for part in "qkv"]
    assert (from_output == last_third) == (n_heads % 3 == 0)
