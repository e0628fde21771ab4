"""The ``ov`` gradient is the gradient of the loss with respect to each head's product M_h = W_O_h W_V_h.

Checked three ways: on a nanoGPT-style model rebuilt with every M_h as a parameter, autograd's gradient
of M_h is the stored G_h (and its spectra the stored rows); on the Hugging Face families (rotary, grouped
queries, biases, Conv1D) G_h reproduces the gradients of W_O and W_V; eager attention gives what SDPA gives.
"""

from __future__ import annotations

import math

import nanogpt
import numpy as np
import pytest
import tiny_models
import torch
from torch.nn import functional as F

from layerlake.core.layouts import PRESETS
from layerlake.etl import capture, layouts, sites
from layerlake.etl.errors import ExtractionError
from layerlake.etl.extract import capture_targets, extract_from_model
from layerlake.etl.ov_gradient import OvGradient
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch

IDS = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(5))
POSITIONS = torch.tensor([[s, 8] for s in range(5)])
REF = CheckpointRef("tiny", "m", 1, "step1", 1, "local", "/nowhere")
PROBE = ProbeBatch(
    "p", "test", tuple(tuple(r) for r in IDS.tolist()), tuple((s, 8) for s in range(5)), "last"
)


def gradient_pass(model: torch.nn.Module, layout=None, batch_size: int = 2):
    """G of every layer from the pass's hooks, and the model left holding its parameters' .grad."""
    fitted = layouts.fit(model, layout)
    ov = OvGradient(fitted)
    model.zero_grad(set_to_none=True)
    capture.run_pass(
        model, IDS, POSITIONS, capture_targets(fitted, ("resid_post",)), gradients=True,
        batch_size=batch_size, call=fitted.layout.call, ov_gradient=ov,
    )  # fmt: skip
    return fitted, ov.g


# -- the reparametrised model ---------------------------------------------------------------------------


def reparametrised_loss(model: nanogpt.GPT, ids: torch.Tensor, m: list[torch.nn.Parameter]) -> torch.Tensor:
    """The nanoGPT model's mean next-token loss, each block's attention written with M_h as the parameter:
    ``out_i = sum_h M_h (A_h X)_i + sum_h W_O_h b_V_h + b_O``, A from plain torch (no SDPA)."""
    t = ids.shape[1]
    x = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(t))
    for layer, block in enumerate(model.transformer.h):
        attn, h = block.attn, block.attn.n_head
        xn = block.ln_1(x)
        d, dh = xn.shape[-1], xn.shape[-1] // h
        q, k, _ = attn.c_attn(xn).split(d, dim=2)
        q, k = (z.view(*z.shape[:2], h, dh).transpose(1, 2) for z in (q, k))
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -math.inf)
        a = torch.softmax(scores, dim=-1)  # (B, H, T, T)
        b_v = attn.c_attn.bias[2 * d :].view(h, dh)
        w_o = attn.c_proj.weight.view(d, h, dh)
        out = torch.einsum("bhij,bjd,hed->bie", a, xn, m[layer])  # sum_h M_h (A_h X)_i
        out = out + torch.einsum("ehk,hk->e", w_o, b_v) + attn.c_proj.bias
        x = x + out
        x = x + block.mlp(block.ln_2(x))
    logits = model.lm_head(model.transformer.ln_f(x))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def products(model: nanogpt.GPT) -> list[torch.nn.Parameter]:
    """M_h = W_O_h W_V_h of every head of every block, as parameters (H, d, d) per layer."""
    found = []
    for block in model.transformer.h:
        h, d = block.attn.n_head, block.attn.n_embd
        w_v = block.attn.c_attn.weight.detach()[2 * d :].view(h, d // h, d)
        w_o = block.attn.c_proj.weight.detach().view(d, h, d // h).permute(1, 0, 2)
        found.append(torch.nn.Parameter(w_o @ w_v))
    return found


def test_g_is_autograd_gradient_of_a_model_reparametrised_with_m_h():
    model = nanogpt.gpt(seed=1).double()
    m = products(model)
    with torch.no_grad():  # the reparametrisation is the same function
        same = F.cross_entropy(
            *(lambda lg: (lg[:, :-1].reshape(-1, 40), IDS[:, 1:].reshape(-1)))(model(IDS, IDS)[0])
        )
        assert reparametrised_loss(model, IDS, m).item() == pytest.approx(same.item(), rel=1e-12)
    reparametrised_loss(model, IDS, m).backward()
    _, g = gradient_pass(model, "nanogpt")
    for layer, param in enumerate(m):  # (the pass takes its loss's softmax in float32: agreement to ~1e-7)
        torch.testing.assert_close(g[layer], param.grad, rtol=1e-6, atol=1e-6 * param.grad.abs().max().item())
    # the stored rows: each head's spectrum and the layer's (sum_h G_h), not the product rule's
    tables, _ = extract_from_model(
        model,
        REF,
        "f" * 64,
        PROBE,
        ExtractOptions(gradients=True, dtype="float64", batch_size=3),
        layout="nanogpt",
    )
    stored = {
        (r["layer"], r["head"]): r["sv"]
        for r in tables["spectra"].to_pylist()
        if r["matrix"] == "ov" and r["tensor"] == "grad"
    }
    assert set(stored) == {(layer, h) for layer in range(2) for h in [None, 0, 1, 2, 3]}
    for (layer, head), sv in stored.items():
        want = m[layer].grad.sum(0) if head is None else m[layer].grad[head]
        expected = np.linalg.svd(want.numpy(), compute_uv=False)
        np.testing.assert_allclose(sv, expected, rtol=0, atol=1e-6 * expected[0])
    rule = {
        (r["layer"], r["head"]) for r in tables["spectra"].to_pylist() if r["matrix"] == "ov_product_rule"
    }
    assert rule == set(stored)  # kept under its own name


# -- the Hugging Face families: G_h against the gradients of W_O and W_V ---------------------------------

FAMILIES = {
    "neox": lambda: tiny_models.neox(4, 1, hidden_size=16),  # rotary, fused QKV interleaved, biases
    "llama-gqa": lambda: tiny_models.llama(2),  # rotary, 4 query heads on 2 key/value heads
    "qwen2-biases": lambda: tiny_models.llama_variant("qwen2", 3),  # V bias, grouped queries
    "gpt2": lambda: tiny_models.gpt2(4),  # Conv1D, stacked QKV
}


def sum_of_deltas(model, fitted) -> dict[int, torch.Tensor]:
    """sum_i delta_i per layer (the gradient at W_O's output summed over positions), by plain hooks."""
    found, handles = {}, []

    def keep(layer):
        def hook(module, args, output):
            output.register_hook(lambda g: found.__setitem__(layer, found.get(layer, 0) + g.sum(dim=(0, 1))))

        return hook

    for block in fitted.blocks:
        handles.append(block.owner("dense").register_forward_hook(keep(block.index)))
    try:
        model.zero_grad(set_to_none=True)
        logits = model(IDS).logits
        (capture.next_token_loss_sum(logits, IDS) / (IDS.shape[0] * (IDS.shape[1] - 1))).backward()
    finally:
        for handle in handles:
            handle.remove()
    return found


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_g_reproduces_the_gradients_of_w_o_and_w_v(name):
    """dL/dW_O_h = G_h W_V_h^T + (sum_i delta_i) b_V_h^T (the bias path is outside M_h), and
    dL/dW_V_g = sum over the heads h of kv group g of W_O_h^T G_h."""
    model = FAMILIES[name]().double()
    fitted, g = gradient_pass(model)
    layout, shape = fitted.layout, fitted.shape
    h, dh, group = shape.n_heads, shape.d_head, shape.group
    deltas = sum_of_deltas(model, fitted)
    for block in fitted.blocks:
        w_v = sites.split_value_weight(block.read(block.value_matrix), layout, shape, "true_v")  # (H, dh, d)
        value_owner = block.owner(block.value_matrix)
        bias = value_owner.bias
        b_v = (
            None
            if bias is None
            else sites.split_value_output(bias.detach()[None], layout, shape, "true_v")[0]
        )
        g_o, g_v = block.read("dense", "grad"), block.read(block.value_matrix, "grad")
        g_v_heads = sites.split_value_weight(g_v, layout, shape, "true_v")
        for head in range(h):
            want = g_o[:, head * dh : (head + 1) * dh]
            got = g[block.index][head] @ w_v[head].T
            if b_v is not None:
                got = got + torch.outer(deltas[block.index], b_v[head])
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
        for kv in range(shape.n_kv_heads):
            heads = range(kv * group, (kv + 1) * group)
            got = sum(block.read("dense")[:, x * dh : (x + 1) * dh].T @ g[block.index][x] for x in heads)
            torch.testing.assert_close(got, g_v_heads[kv * group], rtol=1e-9, atol=1e-11)


def test_eager_attention_gives_what_sdpa_gives():
    """Hugging Face's eager attention returns its probabilities (no SDPA call): the same G."""
    sdpa = tiny_models.llama(2).double()
    eager = tiny_models.llama(2).double()
    eager.config._attn_implementation = "eager"
    _, g_sdpa = gradient_pass(sdpa)
    _, g_eager = gradient_pass(eager)
    for layer in g_sdpa:  # (eager takes its softmax in float32)
        scale = g_sdpa[layer].abs().max().item()
        torch.testing.assert_close(g_eager[layer], g_sdpa[layer], rtol=1e-5, atol=1e-6 * scale)


def test_micro_batches_add_up_to_the_whole_batch():
    model = tiny_models.neox(2, 0).double()
    _, whole = gradient_pass(model, batch_size=None)
    _, chunked = gradient_pass(model, batch_size=2)
    for layer in whole:
        torch.testing.assert_close(chunked[layer], whole[layer], rtol=1e-10, atol=1e-13)


def test_a_layout_without_probabilities_stores_no_ov_gradient_but_the_product_rule():
    import dataclasses

    layout = dataclasses.replace(PRESETS["nanogpt"], name="nanogpt-noprobs", probs="none")
    tables, _ = extract_from_model(
        nanogpt.gpt(), REF, "f" * 64, PROBE, ExtractOptions(gradients=True), layout=layout
    )
    grads = {r["matrix"] for r in tables["spectra"].to_pylist() if r["tensor"] == "grad"}
    assert "ov" not in grads and "ov_product_rule" in grads
    weights = {r["matrix"] for r in tables["spectra"].to_pylist() if r["tensor"] == "weight"}
    assert "ov" in weights and "ov_product_rule" not in weights


def test_recomputed_probabilities_that_miss_the_attention_output_fail():
    """A wrong recomputation (here: the probabilities of another scale) is refused, not stored."""
    model = nanogpt.gpt().double()
    fitted = layouts.fit(model, "nanogpt")
    ov = OvGradient(fitted)
    q = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    out = F.scaled_dot_product_attention(q, q, q, is_causal=True, scale=0.3)
    wrong = torch.softmax(q[:, 0] @ q[:, 0].transpose(-2, -1), dim=-1)  # scale 1, no causal mask
    with pytest.raises(ExtractionError, match="do not give layer 0's attention output"):
        ov._check_output(0, 0, wrong, q[:, 0], out[:, 0])


def test_an_attention_that_calls_sdpa_twice_is_refused():
    model = nanogpt.gpt().double()
    block = model.transformer.h[0].attn
    original = block.forward
    block.forward = lambda x: original(x) + 0 * original(x)  # two SDPA calls in one attention forward
    with pytest.raises(ExtractionError, match="called scaled_dot_product_attention twice"):
        gradient_pass(model, "nanogpt")


def test_gradient_rows_taken_before_the_new_definition_are_re_extracted():
    """The config hash of a gradient extraction names the ov gradient's definition, so the driver replaces
    rows whose ``ov`` gradient was the product rule; extractions without gradients hash as before."""
    from dataclasses import fields

    from layerlake.core.hashing import stable_hash
    from layerlake.etl.task import _plain

    def old_hash(options):
        skip = ("device", "torch_threads", "batch_size", "store_activations", "spectra_precision")
        return stable_hash(
            {f.name: _plain(getattr(options, f.name)) for f in fields(options) if f.name not in skip}
        )

    assert ExtractOptions().config_hash() == old_hash(ExtractOptions())
    assert ExtractOptions(gradients=True).config_hash() != old_hash(ExtractOptions(gradients=True))


def test_probabilities_from_a_module_give_what_sdpa_gives_and_none_at_all_is_refused():
    """nanoGPT's hand-written attention (no SDPA): ``probs: module`` reads its dropout's output; the SDPA
    preset on it finds no probabilities and says so instead of storing anything."""
    import dataclasses

    flash = nanogpt.gpt(seed=2).double()
    manual = nanogpt.gpt(seed=2, flash=False).double()
    layout = dataclasses.replace(PRESETS["nanogpt"], name="nanogpt-manual", probs="module",
                                 probs_module="attn.attn_dropout")  # fmt: skip
    _, g_flash = gradient_pass(flash, "nanogpt")
    _, g_manual = gradient_pass(manual, layout)
    for layer in g_flash:
        torch.testing.assert_close(g_manual[layer], g_flash[layer], rtol=1e-7, atol=1e-9)
    with pytest.raises(
        ExtractionError, match="has no attention probabilities: its attention module called no"
    ):
        gradient_pass(manual, "nanogpt")
