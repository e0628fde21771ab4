"""Run the probe batch through a model once, capturing chosen module outputs at the probe positions.

Forward hooks gather, during the pass, only the ``n`` probe rows of each hooked output (as float64
on the model's device) into one ``(n, features)`` buffer per (layer, capture name); no
full-sequence activation outlives the hook call. Hooks are removed in ``finally``, so an exception
inside the pass leaves the model as it was. With gradients, the same forward feeds the language-model
loss and one backward; without, it runs under ``torch.no_grad()`` and skips the LM head.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from layerlake.core.choices import ModelCall
from layerlake.etl.errors import ExtractionError

Key = tuple[int, str]  # (layer, capture name)


@dataclass
class Gathered:
    """The probe rows captured so far, and which rows the current micro-batch fills."""

    n: int
    buffers: dict[Key, torch.Tensor] = field(default_factory=dict)
    filled: dict[Key, int] = field(default_factory=dict)
    _seq: torch.Tensor | None = None  # sequence index inside the micro-batch, per selected row
    _tok: torch.Tensor | None = None  # token index, per selected row
    _rows: torch.Tensor | None = None  # where the selected rows go in the (n, f) buffer
    in_backward: bool = False  # a forward now is activation checkpointing's recomputation: not stored again

    def select(self, positions: torch.Tensor, start: int, stop: int) -> None:
        """Point the hooks at the probe positions of sequences ``start <= s < stop``.

        ``positions`` is the probe's (n, 2) tensor of (sequence, token) pairs, in row order.
        """
        mask = (positions[:, 0] >= start) & (positions[:, 0] < stop)
        self._rows = mask.nonzero().squeeze(1)
        self._seq = positions[self._rows, 0] - start
        self._tok = positions[self._rows, 1]

    def store(self, key: Key, output: torch.Tensor) -> None:
        """Copy the selected rows of one (batch, seq, features) output into the key's buffer."""
        if self.in_backward or self._rows is None or self._rows.numel() == 0:
            return
        rows = output.detach()[self._seq, self._tok].to(torch.float64)  # detached first: saves nothing
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = rows.new_zeros(self.n, rows.shape[-1])
        buf[self._rows] = rows
        self.filled[key] = self.filled.get(key, 0) + int(self._rows.numel())

    def check_complete(self) -> None:
        """Every hooked output must have delivered each of the n rows exactly once."""
        short = {k: c for k, c in self.filled.items() if c != self.n}
        if short:
            raise ExtractionError(
                f"captured rows do not add up to the probe's n={self.n}: {short}",
                fix="check that every probe position lies inside its sequence and that hooked modules run once",
            )


@contextmanager
def hooked(targets: dict[Key, nn.Module], gathered: Gathered) -> Iterator[Gathered]:
    """Forward hooks on ``targets`` storing into ``gathered`` for the duration of the block; always removed."""
    handles = []
    try:
        for key, module in targets.items():
            handles.append(module.register_forward_hook(_hook(key, gathered)))
        yield gathered
    finally:
        for handle in handles:
            handle.remove()


def _hook(key: Key, gathered: Gathered):
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        # Blocks may return a tuple (hidden state first); Linear layers return the tensor.
        out = output[0] if isinstance(output, tuple) else output
        gathered.store(key, out)

    return hook


def next_token_loss_sum(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy: ``sum_{b, t < T-1} -log softmax(logits[b, t])[ids[b, t+1]]``."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pass(
    model: nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    targets: dict[Key, nn.Module],
    *,
    gradients: bool,
    batch_size: int | None = None,
    call: ModelCall = ModelCall.hf,
    ov_gradient=None,
    apart_from_training: bool = False,
) -> tuple[dict[Key, torch.Tensor], dict[str, float]]:
    """One pass of the probe ``ids`` (n_sequences x seq_len) through ``model``.

    Returns the (n, features) float64 rows of every target, in probe-row order, and the seconds
    spent in ``forward`` and ``backward``. ``batch_size`` sequences go through at a time (None: all):
    chunks only bound memory. With ``gradients`` the loss is the mean next-token cross-entropy over
    all ``n_sequences * (seq_len - 1)`` predictions; each chunk's summed loss is divided by that total
    count, so the accumulated ``.grad`` equals the full batch's. ``call`` says how the model takes token
    ids and gives logits (a layout's ``call``); ``ov_gradient`` (an ``etl.ov_gradient.OvGradient``)
    accumulates the heads' OV gradients during the same pass.

    ``apart_from_training`` (a model in training): the gradients are taken by ``torch.autograd.grad``
    and added to ``.grad`` here, so no parameter's gradient accumulator runs. Training libraries hang
    their own work on those nodes (Megatron's ``main_grad`` accumulation, DeepSpeed's and DDP's gradient
    reductions), and no handle reaches them to set them aside; a probe's gradient must not reach them.
    A model whose forward uses reentrant checkpointing cannot give gradients that way:
    ``ReentrantCheckpoint`` is raised, and the caller runs the pass again with a plain backward.
    """
    device = ids.device
    gathered = Gathered(n=int(positions.shape[0]))
    step = batch_size or ids.shape[0]
    total = ids.shape[0] * (ids.shape[1] - 1)
    times = {"forward": 0.0, "backward": 0.0}
    chunks = 0
    attached = ov_gradient.attached() if ov_gradient is not None and gradients else nullcontext()
    with hooked(targets, gathered), torch.set_grad_enabled(gradients), attached:
        for start in range(0, ids.shape[0], step):
            chunk = ids[start : start + step]
            gathered.select(positions, start, start + chunk.shape[0])
            t0 = time.perf_counter()
            logits = forward(model, chunk, call, gradients)
            if gradients:
                loss = next_token_loss_sum(logits, chunk) / total
            _sync(device)
            times["forward"] += time.perf_counter() - t0
            if gradients:
                t0 = time.perf_counter()
                with recomputing(gathered, ov_gradient):
                    if apart_from_training:
                        add_gradients(loss, model)
                    else:
                        loss.backward()
                _sync(device)
                times["backward"] += time.perf_counter() - t0
            del logits
            chunks += 1
        if ov_gradient is not None and gradients:
            ov_gradient.check_complete(chunks)
    gathered.check_complete()
    return gathered.buffers, times


@contextmanager
def recomputing(gathered: Gathered, ov_gradient) -> Iterator[None]:
    """For the block (a backward): the forwards that run are activation checkpointing's recomputations
    of blocks already captured, and the hooks store nothing of them (rows would count twice)."""
    parts = [gathered] + ([ov_gradient] if ov_gradient is not None else [])
    for part in parts:
        part.in_backward = True
    try:
        yield
    finally:
        for part in parts:
            part.in_backward = False


class ReentrantCheckpoint(Exception):
    """The model's forward checkpoints reentrantly (``torch.utils.checkpoint(..., use_reentrant=True)``,
    Megatron's checkpoint function), which cannot give gradients to ``torch.autograd.grad``."""


def add_gradients(loss: torch.Tensor, model: nn.Module) -> None:
    """Add the gradient of ``loss`` to each parameter's ``.grad`` without running any gradient
    accumulator node (``run_pass``'s ``apart_from_training``). The sum is out of place: autograd may
    hand two parameters one gradient tensor (``w1 + w2``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    except RuntimeError as error:
        if ".grad()" in str(error) and "compatible" in str(error):  # torch's and Megatron's words
            raise ReentrantCheckpoint(str(error)) from error
        raise
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            param.grad = grad if param.grad is None else param.grad + grad


def forward(model: nn.Module, ids: torch.Tensor, call: ModelCall, logits: bool) -> torch.Tensor | None:
    """Run ``model`` on ``ids`` as its layout's ``call`` says; the logits (B, T, vocab), or None where
    they are not needed (``logits=False``: a Hugging Face model runs its base model only)."""
    if call == ModelCall.hf:
        if not logits:
            model.base_model(input_ids=ids, use_cache=False)
            return None
        return model(input_ids=ids, use_cache=False).logits
    if call == ModelCall.tokens_targets:
        targets = torch.full_like(ids, -1)  # nanoGPT's ignore index; with targets it returns all logits
        targets[:, :-1] = ids[:, 1:]
        out = model(ids, targets)
    else:
        out = model(ids)
    found = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
    if not isinstance(found, torch.Tensor) or found.shape[:2] != ids.shape:
        raise ExtractionError(
            f"{type(model).__name__}(ids) gave {type(found).__name__}"
            f"{tuple(found.shape) if isinstance(found, torch.Tensor) else ''}, not logits of shape "
            f"({ids.shape[0]}, {ids.shape[1]}, vocab)",
            fix="set the layout's call: tokens (model(ids) returns the logits) or tokens_targets (nanoGPT)",
        )
    return found
