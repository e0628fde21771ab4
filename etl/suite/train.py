"""Trains one model of the embedded suite, saving a checkpoint at every scheduled step; resumable.

Everything that decides the weights is a pure function of the config: the initial weights of
``model_seed(seed, name)``, the batch of step ``t`` (``batch_at``), the learning rate of step ``t``
(``lr_at``). So a run that resumes from a checkpoint (its weights + the AdamW state saved beside
it in ``<model>/_resume/``) takes exactly the same updates as one that never stopped.

Step ``t`` means "after ``t`` optimizer updates": ``step0`` is the initialisation, as in Pythia.

While a model trains, ``_resume/`` keeps the state of every checkpoint saved so far, so a build that
was interrupted resumes from its newest checkpoint whose weights are intact (a damaged one is skipped).
The states are deleted once the model is complete; a damaged checkpoint of a complete model is then
trained again from step 0 up to that step only (``TrainPlan.only``), the other checkpoints kept.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerlake.conf.schema import ModelSpec, TrainConfig
from layerlake.core.hashing import stable_hash

RESUME_DIR = "_resume"
LOSS_FILE = "loss.parquet"
GRAD_CLIP = 1.0  # Pythia clips the global gradient norm at 1.0


@dataclass
class TrainPlan:
    """One model to train: its spec, the schedule, where it goes, and the identity of its config."""

    spec: ModelSpec
    train: TrainConfig
    steps: tuple[int, ...]
    folder: Path  # <suites>/<suite>/<model>
    tokens: np.ndarray = field(repr=False)  # training token ids (int64)
    config_hash: str = ""
    resume_from: int | None = None  # a step with an intact checkpoint and resume state; None: from scratch
    only: frozenset[int] | None = None  # repair: save just these checkpoints, stop after the last of them
    tracker: Any = None  # a layerlake.etl.track.TrackedRun: scalars at every update, snapshots at checkpoints


@dataclass
class TrainOutcome:
    n_params: int
    resumed_from: int | None
    first_loss: float
    last_loss: float


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of update ``step`` (1-based): linear warmup, then cosine decay to ``min_lr_ratio``.

    lr(t) = lr * t / w                                        for t <= w
    lr(t) = lr * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (t - w) / (T - w)   otherwise

    >>> cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    >>> lr_at(5, cfg), lr_at(10, cfg), round(lr_at(60, cfg), 6), round(lr_at(110, cfg), 6)
    (0.5, 1.0, 0.55, 0.1)
    """
    warmup = max(train.warmup_steps, 0)
    if step <= warmup:
        return train.lr * step / max(warmup, 1)
    progress = (step - warmup) / max(train.max_steps - warmup, 1)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return train.lr * (train.min_lr_ratio + (1.0 - train.min_lr_ratio) * cosine)


def batch_at(tokens: np.ndarray, step: int, train: TrainConfig) -> np.ndarray:
    """The batch of update ``step``: ``batch_size`` random windows of ``seq_len`` tokens.

    The generator is seeded by ``(seed, step)``, so every model of the suite sees the same data in
    the same order, and a resumed run needs no data-loader state.
    """
    rng = np.random.default_rng([train.seed, step])
    starts = rng.integers(0, len(tokens) - train.seq_len, size=train.batch_size)
    return np.stack([tokens[s : s + train.seq_len] for s in starts])


def model_seed(seed: int, name: str) -> int:
    """Init seed of one model: tied to its name, not its position in the suite's list."""
    return int(stable_hash({"seed": seed, "model": name})[:8], 16)


def train_model(plan: TrainPlan, on_update: Callable[[int, str], None]) -> TrainOutcome:
    """Train ``plan``'s model to ``train.max_steps`` (from ``plan.resume_from`` if given), or, for a
    repair (``plan.only``), up to the last checkpoint to rewrite.

    ``on_update(step, note)`` is called after every update (for progress bars). Writes the
    checkpoints, then ``loss.parquet`` (not for a repair: the complete model's log stands), then
    removes ``_resume/``.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from layerlake.etl.suite.model import new_model

    hf_logging.disable_progress_bar()  # "Writing model shards" bars would fight the rich progress display
    torch.set_num_threads(plan.train.torch_threads)
    model = new_model(plan.spec, plan.train, model_seed(plan.train.seed, plan.spec.name))
    optimizer = _optimizer(model, plan.train)
    losses: list[tuple[int, float, float, int]] = []
    start = None if plan.resume_from is None else _resume(plan, plan.resume_from, model, optimizer, losses)
    if start is None and _saves(plan, 0):
        _save_checkpoint(plan, model, optimizer, losses, 0)
        if plan.tracker is not None:
            plan.tracker.snapshot(0, model, force=True)
    model.train()
    tokens_per_update = plan.train.batch_size * plan.train.seq_len
    last = plan.train.max_steps if plan.only is None else max(plan.only)
    for step in range(1 if start is None else start + 1, last + 1):
        lr = lr_at(step, plan.train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(batch_at(plan.tokens, step, plan.train))
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append((step, float(loss.item()), lr, step * tokens_per_update))
        if _saves(plan, step):
            _save_checkpoint(plan, model, optimizer, losses, step)
        if plan.tracker is not None:
            plan.tracker.log(
                step, loss=losses[-1][1], lr=lr, grad_norm=float(grad_norm), tokens_seen=losses[-1][3]
            )
            if step in plan.steps:
                plan.tracker.snapshot(step, model, force=True)
        on_update(step, f"loss {losses[-1][1]:.3f}")
    if plan.only is None:
        _write_losses(plan.folder / LOSS_FILE, losses)
    shutil.rmtree(plan.folder / RESUME_DIR, ignore_errors=True)
    n_params = sum(p.numel() for p in model.parameters())
    first, final = (losses[0][1], losses[-1][1]) if losses else (math.nan, math.nan)
    return TrainOutcome(n_params, start, first, final)


def _saves(plan: TrainPlan, step: int) -> bool:
    return step in plan.steps and (plan.only is None or step in plan.only)


def _optimizer(model, train: TrainConfig):
    """AdamW; no weight decay on biases and LayerNorm gains (1-d tensors), as in GPT-NeoX."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95), eps=1e-8)


def _save_checkpoint(plan: TrainPlan, model, optimizer, losses, step: int) -> None:
    """``step<N>/`` (config.json + model.safetensors) appears complete or not at all; then the
    resume state for that step, so a resume point always has its weights on disk."""
    import torch

    final = plan.folder / f"step{step}"
    tmp = plan.folder / f".tmp-step{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if final.exists():  # left by a run killed before it saved the matching resume state
        shutil.rmtree(final)
    os.rename(tmp, final)
    resume = plan.folder / RESUME_DIR
    resume.mkdir(exist_ok=True)
    state = {
        "step": step,
        "config_hash": plan.config_hash,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "losses": list(losses),
    }
    tmp_state = resume / f".state-step{step}.pt.tmp"
    torch.save(state, tmp_state)
    os.replace(tmp_state, resume / f"state-step{step}.pt")  # every checkpoint's state stays until the end


def resume_points(folder: Path) -> list[int]:
    """Steps, ascending, with a resume state in ``<folder>/_resume/`` and intact weights beside it."""
    from layerlake.etl.errors import CheckpointError
    from layerlake.etl.sources import check_weights_file

    points = []
    for path in (folder / RESUME_DIR).glob("state-step*.pt"):
        step = _state_step(path)
        try:
            check_weights_file(folder / f"step{step}" / "model.safetensors")
        except CheckpointError:
            continue
        points.append(step)
    return sorted(points)


def _resume(plan: TrainPlan, step: int, model, optimizer, losses: list) -> int | None:
    """Load the resume state of ``step`` (chosen by the planner from ``resume_points``); its step, or
    None (train from scratch) when the state was saved for another config."""
    import torch

    state = torch.load(plan.folder / RESUME_DIR / f"state-step{step}.pt", weights_only=True)
    if state["config_hash"] != plan.config_hash:
        return None
    # Through from_pretrained: transformers 5 saves GPT-NeoX's lm_head under Pythia's on-disk name
    # `embed_out`, so the file's keys are not the module's state-dict keys.
    saved = type(model).from_pretrained(plan.folder / f"step{step}", dtype=torch.float32)
    model.load_state_dict(saved.state_dict(), strict=True)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    losses[:] = [tuple(row) for row in state["losses"]]
    return int(state["step"])


def _state_step(path: Path) -> int:
    return int(path.name.removeprefix("state-step").removesuffix(".pt"))


def _write_losses(path: Path, losses: list[tuple[int, float, float, int]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    step, loss, lr, tokens = (list(col) for col in zip(*losses, strict=True)) if losses else ([], [], [], [])
    table = pa.table(
        {
            "step": pa.array(step, pa.int64()),
            "loss": pa.array(loss, pa.float64()),
            "lr": pa.array(lr, pa.float64()),
            "tokens_seen": pa.array(tokens, pa.int64()),
        }
    )
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
