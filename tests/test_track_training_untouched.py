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
