"""A snapshot of a sharded model (FSDP2's ``fully_shard``: every parameter a DTensor split over the ranks),
taken by every rank together, whose rows equal those of the same model unsharded.

Each gather is a collective, so every rank runs the same steps in the same order; only the writer
rank computes summaries and spectra, the others drop what they gathered at once:

1. the weights' hash: every state-dict tensor gathered in name order, one at a time, and hashed as
   ``sources.weights_sha256`` hashes an unsharded model;
2. weight spectra: per block, the matrices gathered one group at a time (``groups``), never the model;
3. the probe's forward and backward through the sharded model on every rank at once (FSDP gathers each
   block for its forward, as in training; every rank feeds the same probe, so the averaged gradient
   shards are the probe's gradient); hooks capture the sites on every rank;
4. gradient spectra as in 2, from the gradients' shards.

A group is the matrices one canonical matrix is computed from: a Linear's weight alone, or W_O with the
value map for the OV products. ``sites.block_matrices`` itself decides every matrix, on a stand-in block
whose group's weights are gathered and whose other weights are shape-only (``meta``) tensors: what it
builds from a meta tensor is dropped, what it builds from gathered ones only is kept. Memory beyond the
training's own: one group's gathered weights (and gradients), measured in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import pyarrow as pa
import torch
from torch import nn

from layerlake.core.choices import AttentionProbs, Dtype, Tensor
from layerlake.etl import capture, metrics, sites
from layerlake.etl.errors import ExtractionError
from layerlake.etl.extract import (
    TORCH_DTYPES,
    Phases,
    Rows,
    Spectrum,
    _grads_enabled,
    capture_targets,
    check_options,
    ov_gradient_matrices,
    probe_tensors,
)
from layerlake.etl.layouts import BlockFit, Fit
from layerlake.etl.ov_gradient import OvGradient
from layerlake.etl.task import ExtractOptions, ProbeBatch


def snapshot_sharded(
    model: nn.Module, step: int, probe: ProbeBatch, options: ExtractOptions, writes: bool, layout=None
) -> tuple[str, dict[str, pa.Table], dict[str, float]]:
    """The weights' hash, the tables and the phase seconds of one snapshot of a sharded ``model``, on
    every rank at once (the tables are empty on the ranks that do not write). ``layout``: as for
    ``extract.extract_from_model``."""
    from layerlake.etl.sources import weights_sha256

    digest = weights_sha256(Gathered(model))
    return (digest, *extract_sharded(model, step, digest, probe, options, writes, layout))


def extract_sharded(
    model: nn.Module, step: int, digest: str, probe: ProbeBatch, options: ExtractOptions, writes: bool,
    layout=None,
) -> tuple[dict[str, pa.Table], dict[str, float]]:  # fmt: skip
    """``extract.extract_from_model`` for a sharded model, called on every rank (see the module's steps).
    The model is neither moved nor cast: ``options`` must hold its own dtype and device."""
    fitted = layout if isinstance(layout, Fit) else check_options(options, probe, model, layout)
    if not options.gradients:  # without a loss the pass would call the base model, past FSDP's root
        raise ExtractionError(
            "a snapshot of a sharded (FSDP) model runs the probe through the whole model, with gradients",
            fix="leave gradients on in the run's extraction options (the tracker's default)",
        )
    timed = Phases(torch.device(options.device))
    timed.seconds["gather"] = 0.0
    rows = Rows(step, digest, probe.probe_id, timed)
    was_training = model.training
    try:
        if options.weight_spectra:
            add_spectra(rows, fitted, options, Tensor.weight, writes)
        model.eval()
        with _grads_enabled(model, options.gradients):
            ids, positions = probe_tensors(probe, torch.device(options.device))
            # G_h needs no weights (the value map's input, the probabilities, W_O's output gradient):
            # every rank reduces it from its own full activations; the writer keeps it
            ov_gradient = OvGradient(fitted) if fitted.layout.probs != AttentionProbs.none else None
            captured, pass_times = capture.run_pass(
                model, ids, positions, capture_targets(fitted, options.sites),
                gradients=options.gradients, batch_size=options.batch_size, call=fitted.layout.call,
                ov_gradient=ov_gradient,
            )  # fmt: skip
            timed.seconds.update(pass_times)
            add_activations(rows, captured, fitted, options, writes)
            if options.gradients:
                add_spectra(rows, fitted, options, Tensor.grad, writes, ov_gradient)
    finally:
        model.train(was_training)
    return rows.tables(), timed.seconds


# --- gathering -----------------------------------------------------------------------------------------


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of a DTensor (an all-gather: every rank calls it), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


class Gathered:
    """What ``sources.weights_sha256`` reads of a sharded model: a state dict whose tensors are gathered
    as the hash reads them, one at a time, each dropped before the next."""

    def __init__(self, model: nn.Module) -> None:
        self.state = model.state_dict()

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return _GatheredState(self.state)


class _GatheredState(Mapping):
    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state

    def __getitem__(self, name: str) -> torch.Tensor:
        return full(self.state[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def groups(block: BlockFit) -> list[tuple[str, ...]]:
    """The canonical matrices gathered together: W_O with the matrix holding V first (the OV products
    need both), then each other weight alone."""
    pair = (block.value_matrix, "dense")
    return [pair, *sorted(set(block.weights) - set(pair))]


def stand_in(block: BlockFit, real: tuple[str, ...], tensor: str) -> BlockFit:
    """``block`` with every weight held by a stand-in module: the ``real`` ones hold the gathered weight
    (and, for ``tensor="grad"``, its gathered gradient), the others a meta tensor of their shape."""
    weights = {}
    for name in sorted(block.weights):  # every rank gathers the same tensors in the same order
        weight_name, owner, attr = block.weights[name]
        param = getattr(owner, attr)
        if name in real:
            kept = nn.Parameter(full(param.detach()), requires_grad=False)
            if tensor == Tensor.grad and param.grad is not None:
                kept.grad = full(param.grad)
        else:
            kept = nn.Parameter(
                torch.empty(param.shape, dtype=param.dtype, device="meta"), requires_grad=False
            )
        holder = nn.Module()
        setattr(holder, attr, kept)
        weights[name] = (weight_name, holder, attr)
    return dataclasses.replace(block, weights=weights)


def _real(factors: tuple[torch.Tensor, torch.Tensor | None]) -> bool:
    return all(f is None or not f.is_meta for f in factors)


# --- rows ------------------------------------------------------------------------------------------------


def add_spectra(
    rows: Rows, fitted: Fit, options: ExtractOptions, tensor: str, writes: bool,
    ov_gradient: OvGradient | None = None,
) -> None:  # fmt: skip
    """Spectra (and matrix stats) of every block's matrices, as ``extract`` computes them, one gathered
    group at a time; the ``ov`` gradient (G_h) from ``ov_gradient``, which needs no gathering."""
    precision = TORCH_DTYPES[Dtype(options.spectra_precision.value)]
    for block in fitted.blocks:
        done: set = set()
        for names in groups(block):
            with rows.timed("gather"):
                part = stand_in(block, names, tensor)
            if not writes:
                continue
            matrices = sites.block_matrices(part, fitted.layout, fitted.shape, options.v_slice, tensor)
            found = [
                (key, factors)
                for key, factors in matrices.items()
                if key not in done and _real(factors) and (key[1] is None or options.per_head)
            ]
            done.update(key for key, _ in found)
            add(rows, tensor, spectra_of(block.index, found, precision, rows.timed))
            del part, found
        if writes and ov_gradient is not None and tensor == Tensor.grad:
            found = [
                (key, factors)
                for key, factors in ov_gradient_matrices(ov_gradient, block.index).items()
                if key[1] is None or options.per_head
            ]
            add(rows, tensor, spectra_of(block.index, found, precision, rows.timed))


def add(rows: Rows, tensor: str, spectra: list[Spectrum]) -> None:
    for s in spectra:
        rows.add_spectrum(s.layer, tensor, s.matrix, s.head, s.rows, s.cols, s.sv)
        if s.stats is not None:
            rows.add_matrix_stats(s.layer, tensor, s.matrix, s.head, s.stats)


def spectra_of(layer: int, found: list, precision: torch.dtype, timed: Phases) -> list[Spectrum]:
    """The singular values of ``found`` ((matrix, head), (a, b)) and, as ``extract._spectra`` keeps
    them, the entry stats of the whole-layer matrices (parameters, the per-layer products)."""
    with timed("svd"):
        values = metrics.batched_svdvals([f for _, f in found], dtype=precision)
    out = []
    for ((matrix, head), (a, b)), sv in zip(found, values, strict=True):
        with timed("matrix_stats"):
            stats = (
                metrics.entry_stats(a if b is None else metrics.as64(a) @ metrics.as64(b))
                if head is None
                else None
            )
        cols = a.shape[1] if b is None else b.shape[1]
        out.append(Spectrum(layer, matrix, head, a.shape[0], cols, sv, stats))
    return out


def add_activations(rows: Rows, captured: dict, fitted: Fit, options: ExtractOptions, writes: bool) -> None:
    """Stats and sketches of every captured (layer, site[, head]) matrix, as ``extract`` adds them; the
    ``ov`` site's W_O is gathered per layer."""
    layout, shape = fitted.layout, fitted.shape
    for block in fitted.blocks:
        layer = block.index
        w_o = None
        if "ov" in options.sites:
            with rows.timed("gather"):
                w_o = stand_in(block, ("dense",), Tensor.weight).read("dense")
        if not writes:
            continue
        for site in options.sites:
            if site != "ov":
                rows.add_activation(layer, site, None, captured[(layer, site)], options)
                continue
            v = sites.split_value_output(captured[(layer, "value")], layout, shape, options.v_slice)
            whole, per_head = sites.ov_activations(v, metrics.as64(w_o))
            rows.add_activation(layer, "ov", None, whole, options)
            if options.per_head:
                for head in range(shape.n_heads):
                    rows.add_activation(layer, "ov", head, per_head[head], options)


__all__ = ["Gathered", "extract_sharded", "full", "groups", "snapshot_sharded", "stand_in"]
