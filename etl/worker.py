"""The task function every executor runs: load one checkpoint once, extract it in one pass.

It returns Arrow tables and never touches the warehouse: only the driver commits.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pyarrow as pa

from layerlake.etl.task import CheckpointRef, ExtractTask, TaskResult
from layerlake.warehouse.schema import CHECKPOINTS


def resolve_device(requested: str) -> str:
    """``auto`` means the GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            from layerlake.etl.errors import ExtractionError

            raise ExtractionError(
                f"device {requested!r} was asked for but no CUDA device is visible",
                fix="use executor.device=auto or executor.device=cpu",
            )
        return requested
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def placement() -> dict:
    """Where this task ran: process, and the GPU ids Ray assigned (empty outside Ray or without GPUs)."""
    info: dict = {"pid": os.getpid(), "gpu_ids": []}
    ray = sys.modules.get("ray")  # imported in every Ray worker; never imported here just to ask
    if ray is not None and ray.is_initialized():
        info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        info["node_id"] = ray.get_runtime_context().get_node_id()
    return info


def checkpoint_row(
    ref: CheckpointRef, task_id: str, probe_id: str, config, weights_sha256: str, n_params: int
) -> pa.Table:
    """One row of the ``checkpoints`` table: a checkpoint loaded from disk or the hub, or a live model."""
    n_heads = int(getattr(config, "num_attention_heads", 0))
    d_model = int(getattr(config, "hidden_size", 0))
    row = {
        "revision": ref.revision,
        "step": ref.step,
        "tokens_seen": ref.tokens_seen,
        "source": str(ref.source),
        "location": ref.stored_location,
        "weights_sha256": weights_sha256,
        "n_params": n_params,
        "architecture": str(getattr(config, "model_type", "unknown")),
        "n_layers": int(getattr(config, "num_hidden_layers", 0)),
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": int(getattr(config, "head_dim", 0) or (d_model // n_heads if n_heads else 0)),
        "config_json": config_json(config),
        "probe_id": probe_id,
        "task_id": task_id,
    }
    return pa.Table.from_pylist([row], schema=CHECKPOINTS.arrow_schema())


def config_json(config) -> str:
    """The model config as stored: without ``_name_or_path``, the folder it was loaded from (a path of
    this machine, which neither identifies the model nor belongs in a shared dataset)."""
    values = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    return json.dumps(values, sort_keys=True, default=str)


def run_task(task: ExtractTask) -> TaskResult:
    """Load ``task.ref`` once, run the probe batch once, return every table's rows for it."""
    import torch
    from transformers.utils import logging as hf_logging

    from layerlake.etl.extract import extract_from_model
    from layerlake.etl.sources import load_checkpoint, release_checkpoint, weights_file_fingerprint

    hf_logging.disable_progress_bar()  # the extraction's own progress display reports each checkpoint

    if task.options.torch_threads:
        torch.set_num_threads(task.options.torch_threads)
    device = resolve_device(task.options.device)
    options = task.options if device == task.options.device else _with_device(task.options, device)
    start = time.perf_counter()
    fingerprint = weights_file_fingerprint(task.ref)  # before loading: what the rows were made from
    loaded = load_checkpoint(task.ref, device=device, dtype=options.dtype)
    timings = {"load": time.perf_counter() - start}
    try:
        tables, pass_timings = extract_from_model(
            loaded.model, task.ref, loaded.weights_sha256, task.probe, options
        )
        timings.update(pass_timings)
        tables["checkpoints"] = checkpoint_row(
            task.ref, task.task_id, task.probe.probe_id, loaded.config, loaded.weights_sha256, loaded.n_params
        )
    finally:
        release_checkpoint(task.ref)
    timings["total"] = time.perf_counter() - start
    return TaskResult(
        task_id=task.task_id,
        ref=task.ref,
        weights_sha256=loaded.weights_sha256,
        tables=tables,
        timings=timings,
        n_params=loaded.n_params,
        weights_file=fingerprint,
        placement=placement() | {"device": device},
    )


def _with_device(options, device: str):
    from dataclasses import replace

    return replace(options, device=device)
