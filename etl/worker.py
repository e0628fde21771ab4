"""The task function every executor runs: load one checkpoint once, extract it in one pass.

A task has two halves, ``load_task`` and ``compute_task``, so a worker can load the next checkpoint
while one computes (``etl.prefetch``); ``run_task`` runs both, one after the other.

It returns Arrow tables and never touches the warehouse: only the driver commits.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from layerlake.etl.task import CheckpointRef, ExtractOptions, ExtractTask, TaskResult
from layerlake.warehouse.schema import CHECKPOINTS

if TYPE_CHECKING:
    from layerlake.etl.sources import LoadedCheckpoint


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
    ref: CheckpointRef, task_id: str, probe_id: str, config, weights_sha256: str, n_params: int, fitted=None
) -> pa.Table:
    """One row of the ``checkpoints`` table: a checkpoint loaded from disk or the hub, or a live model.

    A Hugging Face model's architecture and shape come from its config (``model_type`` ...); any other
    model's from its fitted layout (``fitted``, an ``etl.layouts.Fit``: the layout's name, its blocks and
    heads), with ``config_json`` its config as plain values where it has one (constructor kwargs, a
    dataclass, a dict)."""
    if hasattr(config, "model_type") or fitted is None:
        n_heads = int(getattr(config, "num_attention_heads", 0))
        d_model = int(getattr(config, "hidden_size", 0))
        facts = {
            "architecture": str(getattr(config, "model_type", "unknown")),
            "n_layers": int(getattr(config, "num_hidden_layers", 0)),
            "d_model": d_model,
            "n_heads": n_heads,
            "d_head": int(getattr(config, "head_dim", 0) or (d_model // n_heads if n_heads else 0)),
        }
    else:
        shape = fitted.shape
        facts = {
            "architecture": fitted.architecture, "n_layers": shape.n_layers, "d_model": shape.d_model,
            "n_heads": shape.n_heads, "d_head": shape.d_head,
        }  # fmt: skip
    row = {
        "revision": ref.revision,
        "step": ref.step,
        "tokens_seen": ref.tokens_seen,
        "source": str(ref.source),
        "location": ref.stored_location,
        "weights_sha256": weights_sha256,
        "n_params": n_params,
        **facts,
        "config_json": config_json(config),
        "probe_id": probe_id,
        "task_id": task_id,
    }
    return pa.Table.from_pylist([row], schema=CHECKPOINTS.arrow_schema())


def config_json(config) -> str:
    """The model config as stored: without ``_name_or_path``, the folder it was loaded from (a path of
    this machine, which neither identifies the model nor belongs in a shared dataset). A model without a
    Hugging Face config: its config's plain values (a dict or a dataclass), else ``{}``."""
    import dataclasses

    if hasattr(config, "to_dict"):
        values = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        values = dataclasses.asdict(config)
    elif isinstance(config, dict):
        values = dict(config)
    else:
        values = {}
    values = {k: v for k, v in values.items() if k != "_name_or_path"}
    return json.dumps(values, sort_keys=True, default=str)


@dataclass
class LoadedTask:
    """The load half's product: a task with its checkpoint in host memory, ready for the compute half."""

    task: ExtractTask
    options: ExtractOptions  # the task's options, with ``device`` resolved (``auto`` -> cuda:0 or cpu)
    loaded: LoadedCheckpoint
    weights_file: dict  # the local checkpoint's files' fingerprint (weights, config.json), before loading
    load_seconds: float
    load_span: tuple[float, float] = (0.0, 0.0)  # when the load started and ended (Unix seconds)


def use_torch_threads(options: ExtractOptions) -> None:
    """Apply ``executor.torch_threads`` (torch's intra-op thread count, a process-wide setting)."""
    import torch

    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)


def load_task(task: ExtractTask) -> LoadedTask:
    """The load half of a task: fingerprint the weights file, then load the checkpoint once, on the CPU
    in the task's dtype (the compute half moves it to the device, so a checkpoint loaded ahead never
    holds device memory). Safe to run in a background thread while another task computes."""
    from transformers.utils import logging as hf_logging

    from layerlake.etl.sources import checkpoint_fingerprint, load_checkpoint

    hf_logging.disable_progress_bar()  # the extraction's own progress display reports each checkpoint
    use_torch_threads(task.options)
    device = resolve_device(task.options.device)
    options = task.options if device == task.options.device else _with_device(task.options, device)
    start, started_at = time.perf_counter(), time.time()
    fingerprint = checkpoint_fingerprint(task.ref)  # before loading: what the rows were made from
    loaded = load_checkpoint(task.ref, device="cpu", dtype=options.dtype)
    return LoadedTask(
        task, options, loaded, fingerprint, time.perf_counter() - start, (started_at, time.time())
    )


@functools.cache
def process_weight_spectra():
    """This process's ``etl.extract.WeightSpectraCache``: a worker that meets the same weights again
    (a duplicate revision; a Ray worker process runs many tasks) takes their spectra once."""
    from layerlake.etl.extract import WeightSpectraCache

    return WeightSpectraCache()


def compute_task(ready: LoadedTask, load_wait: float) -> TaskResult:
    """The compute half: one pass over the loaded checkpoint, every table's rows for it.

    ``load_wait`` is how long the caller waited for the load half (the whole load when it ran just
    before, less when it ran in the background). Timings: ``load`` (the load half's own time),
    ``load_wait``, the pass's phases, and ``total`` = ``load_wait`` + this half's time (the task's
    share of the worker's time). The placement says where it ran and when: ``load_span`` and
    ``compute_span``, [start, end] in Unix seconds (a worker's timeline: which load ran during which
    compute).
    """
    from layerlake.etl.extract import extract_from_model

    task, loaded, options = ready.task, ready.loaded, ready.options
    use_torch_threads(options)
    start, started_at = time.perf_counter(), time.time()
    from layerlake.etl.layouts import fit

    fitted = fit(loaded.model, task.ref.layout or None)
    tables, pass_timings = extract_from_model(
        loaded.model, task.ref, loaded.weights_sha256, task.probe, options, process_weight_spectra(), fitted
    )
    tables["checkpoints"] = checkpoint_row(
        task.ref, task.task_id, task.probe.probe_id, loaded.config, loaded.weights_sha256, loaded.n_params,
        fitted,
    )  # fmt: skip
    timings = {"load": ready.load_seconds, "load_wait": load_wait, **pass_timings}
    timings["total"] = load_wait + time.perf_counter() - start
    return TaskResult(
        task_id=task.task_id,
        ref=task.ref,
        weights_sha256=loaded.weights_sha256,
        tables=tables,
        timings=timings,
        n_params=loaded.n_params,
        weights_file=ready.weights_file,
        placement=placement()
        | {
            "device": options.device,
            "load_span": list(ready.load_span),
            "compute_span": [started_at, time.time()],
        },
    )


def run_task(task: ExtractTask) -> TaskResult:
    """Load ``task.ref`` once, run the probe batch once, return every table's rows for it."""
    start = time.perf_counter()
    ready = load_task(task)
    return compute_task(ready, load_wait=time.perf_counter() - start)


def _with_device(options, device: str):
    from dataclasses import replace

    return replace(options, device=device)
