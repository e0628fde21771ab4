"""A snapshot leaves training as it found it, whatever the model carries: parameters of mixed dtypes are
run as they are (never cast), and the hooks a backward would call for training (an optimizer stepping in
backward, gradient logging, module backward hooks) do not fire for the probe. A probe or a layout's call
that cannot work fails when the run starts, not at every snapshot."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import layerlake
from layerlake.core.choices import ModelCall
from layerlake.core.errors import LayerlakeError
from layerlake.core.layouts import PRESETS
from layerlake.warehouse.writer import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import nanogpt  # noqa: E402
import tiny_models  # noqa: E402


def batches(steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 40, (4, 12), generator=generator) for _ in range(steps)]


PROBE = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(2))


def mixed_precision_neox() -> torch.nn.Module:
    """bfloat16 matrices with float32 LayerNorms (a common mixed-precision recipe)."""
    model = tiny_models.neox(seed=0).to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return model


def test_a_snapshot_runs_a_mixed_precision_model_as_it_is_and_training_is_unchanged(tmp_path):
    def trained(track: bool) -> torch.nn.Module:
        model = mixed_precision_neox()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        run = (
            layerlake.track(model, suite="toy", warehouse=tmp_path, probe=PROBE, cadence=1) if track else None
        )
        for step, batch in enumerate(batches(3)):
            model(input_ids=batch, labels=batch).loss.float().backward()
            if run is not None:
                run.snapshot(step, model)
            optimizer.step()  # a LayerNorm cast to bfloat16 would fail here (AdamW's state is float32)
            optimizer.zero_grad()
        if run is not None:
            run.finish()
            assert run.snapshots == [0, 1, 2] and run.failures == []
        return model

    plain, tracked = trained(track=False), trained(track=True)
    for (name, a), b in zip(plain.named_parameters(), tracked.parameters(), strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    con = layerlake.connect(tmp_path)
    eps = con.sql("select distinct eps from activation_stats").fetchall()
    con.close()
    assert eps == [(torch.finfo(torch.bfloat16).eps,)]  # the pass's rounding: its coarsest dtype


def hooked_training(track: bool, root: Path) -> tuple[torch.nn.Module, dict[str, int]]:
    """A tiny model trained with an optimizer stepping in backward (post-accumulate hooks), a gradient
    tensor hook, a module full backward hook and a global module backward hook, each counting its calls."""
    model = tiny_models.neox(seed=0)
    calls = {"post_accumulate": 0, "tensor": 0, "module": 0, "global": 0}
    optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in model.parameters()}

    def step_in_backward(p: torch.Tensor) -> None:
        calls["post_accumulate"] += 1
        optimizers[p].step()
        optimizers[p].zero_grad()

    def count(name: str):
        def hook(*_args) -> None:
            calls[name] += 1

        return hook

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(step_in_backward)
    model.gpt_neox.embed_in.weight.register_hook(count("tensor"))
    model.gpt_neox.layers[0].mlp.register_full_backward_hook(count("module"))
    global_handle = torch.nn.modules.module.register_module_full_backward_hook(count("global"))
    try:
        run = layerlake.track(model, suite="toy", warehouse=root, probe=PROBE, cadence=1) if track else None
        for step, batch in enumerate(batches(3)):
            model(input_ids=batch, labels=batch).loss.backward()
            if run is not None:
                assert run.snapshot(step, model)
        if run is not None:
            run.finish()
            assert run.failures == []
    finally:
        global_handle.remove()
    return model, calls


def test_a_snapshot_calls_none_of_the_hooks_a_training_backward_calls(tmp_path):
    plain, plain_calls = hooked_training(False, tmp_path)
    tracked, tracked_calls = hooked_training(True, tmp_path)
    assert all(plain_calls.values())  # every hook ran in training
    assert tracked_calls == plain_calls  # and only there: not for the probe, and still after each snapshot
    for (name, a), b in zip(plain.named_parameters(), tracked.parameters(), strict=True):
        assert torch.equal(a, b), name


def main_grad_training(track: bool, root: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], int]:
    """A tiny model trained as Megatron-LM trains: a hook on each parameter's gradient accumulator node
    adds ``.grad`` into a float32 ``main_grad`` and frees it (DeepSpeed and DDP hang their reductions
    on the same nodes); the optimizer steps on ``main_grad``. No handle of those hooks is kept where a
    snapshot could reach it."""
    model = tiny_models.neox(seed=0)
    main_grads = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    calls = [0]
    accumulators = []  # the nodes live as long as something holds them, as in Megatron

    def accumulate(name: str, param: torch.nn.Parameter):
        def hook(*_args) -> None:
            calls[0] += 1
            main_grads[name].add_(param.grad)
            param.grad = None

        return hook

    for name, param in model.named_parameters():
        node = param.expand_as(param).grad_fn.next_functions[0][0]
        node.register_hook(accumulate(name, param))
        accumulators.append(node)
    run = layerlake.track(model, suite="toy", warehouse=root, probe=PROBE, cadence=1) if track else None
    for step, batch in enumerate(batches(3)):
        model(input_ids=batch, labels=batch).loss.backward()
        if run is not None:
            assert run.snapshot(step, model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.sub_(0.1 * main_grads[name])
                main_grads[name].zero_()
    if run is not None:
        run.finish()
        assert run.failures == []
    return model, main_grads, calls[0]


def test_a_snapshot_leaves_the_hooks_on_gradient_accumulators_alone(tmp_path):
    plain, _, plain_calls = main_grad_training(False, tmp_path)
    tracked, _, tracked_calls = main_grad_training(True, tmp_path)
    assert plain_calls > 0 and tracked_calls == plain_calls
    for (name, a), b in zip(plain.named_parameters(), tracked.parameters(), strict=True):
        assert torch.equal(a, b), name
    con = layerlake.connect(tmp_path)
    grads = con.sql("select count(*) from spectra where tensor = 'grad' and sv[1] > 0").fetchall()[0][0]
    con.close()
    assert grads > 0  # the probe's gradients were taken all the same


class Checkpointed(torch.nn.Module):
    """A tiny GPT-NeoX whose blocks run under activation checkpointing in every mode (as torchtitan's
    checkpoint wrapper does): each block's forward runs again in the backward. ``mode``: None (no
    checkpointing), "reentrant" (only a plain backward can give its gradients) or "non-reentrant"."""

    def __init__(self, mode: str | None) -> None:
        super().__init__()
        self.inner = tiny_models.neox(seed=0)
        self.config = self.inner.config  # where the layout finds the number of heads
        self.mode = mode

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        neox = self.inner.gpt_neox
        hidden = neox.embed_in(ids)
        rotary = neox.rotary_emb(hidden, torch.arange(ids.shape[1]).unsqueeze(0))
        for layer in neox.layers:
            block = lambda h, layer=layer: layer(h, position_embeddings=rotary)  # noqa: E731
            hidden = (
                block(hidden)
                if self.mode is None
                else checkpoint(block, hidden, use_reentrant=self.mode == "reentrant")
            )
        return self.inner.lm_head(neox.final_layer_norm(hidden))


def stored_rows(root: Path) -> dict[str, list]:
    """The snapshot's rows that depend on the pass, in a fixed order: activation summaries, spectra."""
    con = layerlake.connect(root)
    found = {
        "activations": con.sql(
            "select layer, site, coalesce(head, -1), mean_norm, max_abs from activation_stats order by 1, 2, 3"
        ).fetchall(),
        "spectra": con.sql(
            "select tensor, layer, matrix, coalesce(head, -1), sv[1], list_sum(sv) from spectra order by all"
        ).fetchall(),
    }
    con.close()
    return found


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_a_model_with_activation_checkpointing_gives_the_rows_of_the_same_model_without(tmp_path, mode):
    # the blocks' forwards run again in the backward: their outputs are captured once, the ov gradient
    # reduced once; reentrant checkpointing, which autograd.grad cannot take, gets a plain backward
    layout = dataclasses.replace(PRESETS["gpt_neox"], blocks="inner.gpt_neox.layers.*", call=ModelCall.tokens)

    def rows(mode: str | None) -> dict[str, list]:
        model, root = Checkpointed(mode), tmp_path / str(mode)
        with layerlake.track(model, layout=layout, suite="toy", warehouse=root, probe=PROBE) as run:
            assert run.snapshot(0, model)
        assert run.failures == []
        return stored_rows(root)

    checkpointed, reference = rows(mode), rows(None)
    assert {r[0] for r in reference["spectra"]} == {"weight", "grad"}
    assert {r[2] for r in reference["spectra"]} >= {"ov", "ov_product_rule"}
    for table, found in checkpointed.items():
        keys = 3 if table == "activations" else 4
        assert [r[:keys] for r in found] == [r[:keys] for r in reference[table]], table
        for got, want in zip(found, reference[table], strict=True):
            assert got[keys:] == pytest.approx(want[keys:], rel=1e-5, abs=1e-9), (table, got[:keys])


@pytest.mark.parametrize(
    ("model", "probe", "says"),
    [
        (tiny_models.neox, torch.rand(4, 8) * 30, "integer token ids; this one is torch.float32"),
        (tiny_models.neox, torch.ones(4, 8, dtype=torch.bool), "integer token ids; it holds True"),
        (tiny_models.neox, torch.arange(8), "must be 2-d"),
        (tiny_models.neox, torch.zeros(2, 4, 8, dtype=torch.long), "must be 2-d"),
        (tiny_models.neox, [[1, 2.5, 3]] * 4, "integer token ids; it holds 2.5"),
        (tiny_models.neox, torch.full((4, 8), 40), "token id 40, outside the model's vocabulary of 40"),
        (tiny_models.neox, torch.full((4, 8), -1), "token id -1, outside"),
        (tiny_models.neox, torch.ones(4, 1, dtype=torch.long), "sequences of 1 token"),
        (tiny_models.gpt2, torch.ones(4, 40, dtype=torch.long), "at most 32 (its learned positions)"),
    ],
)
def test_a_probe_that_does_not_fit_the_model_fails_when_the_run_starts(tmp_path, model, probe, says):
    with pytest.raises(LayerlakeError, match=says.replace("(", r"\(").replace(")", r"\)")) as failure:
        layerlake.track(model(seed=0), suite="toy", warehouse=tmp_path, probe=probe)
    assert failure.value.fix
    assert not Warehouse(tmp_path).entries()  # nothing written


def test_a_layout_call_that_gives_no_logit_per_token_fails_when_the_run_starts(tmp_path):
    model = nanogpt.gpt()  # forward(ids) without targets gives the last position's logits only
    wrong = dataclasses.replace(PRESETS["nanogpt"], call=ModelCall.tokens)
    with pytest.raises(LayerlakeError, match=r"gave Tensor\(1, 1, 40\), not logits of shape \(1, 8, vocab\)"):
        layerlake.track(model, layout=wrong, suite="toy", warehouse=tmp_path, probe=PROBE)
    with layerlake.track(model, layout="nanogpt", suite="toy", warehouse=tmp_path, probe=PROBE) as run:
        assert run.snapshot(0, model)
    assert run.failures == []


def test_a_hook_the_model_swaps_during_a_snapshot_stays_swapped(tmp_path):
    # a forward hook that replaces a gradient hook at each forward (remove the old handle, register anew):
    # a snapshot must not bring back the hook the model removed while its hooks were set aside
    model = tiny_models.neox(seed=0)
    weight = model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight
    handles: list = []

    def swap(*_args) -> None:
        for handle in handles:
            handle.remove()
        handles[:] = [weight.register_hook(lambda grad: grad * 0.5)]

    model.gpt_neox.layers[0].register_forward_hook(swap)
    with layerlake.track(model, suite="toy", warehouse=tmp_path, probe=PROBE, cadence=1) as run:
        batch = batches(1)[0]
        model(input_ids=batch, labels=batch).loss.backward()
        assert run.snapshot(0, model)
    assert len(weight._backward_hooks) == 1  # the one the model holds a handle of


def test_a_model_that_cannot_take_the_probe_as_its_layout_calls_it_fails_when_the_run_starts(tmp_path):
    short = nanogpt.gpt(block_size=6)  # learned positions: 6 of them, the probe has 8 tokens
    layout = dataclasses.replace(PRESETS["nanogpt"], call=ModelCall.tokens_targets)
    short.config.block_size = None  # the size the static check reads is gone: the forward must find it
    with pytest.raises(LayerlakeError, match=r"first sequence \(8 tokens\) does not go through GPT"):
        layerlake.track(short, layout=layout, suite="toy", warehouse=tmp_path, probe=PROBE)
    hf_call = dataclasses.replace(PRESETS["nanogpt"], call=ModelCall.hf)
    with pytest.raises(LayerlakeError, match="calls the model as a Hugging Face one"):
        layerlake.track(nanogpt.gpt(), layout=hf_call, suite="toy", warehouse=tmp_path, probe=PROBE)
