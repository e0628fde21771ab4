"""One extraction pass over one loaded checkpoint: activations, sketches and spectra as Arrow tables.

The orchestrator only: names come from :mod:`layerlake.etl.sites`, hooks and the pass from :mod:`layerlake.etl.capture`,
numbers from :mod:`layerlake.etl.metrics`. Per call:

1. the model moves to ``options.device``; weight spectra are taken from the weights as loaded
   (float64 SVD), before any dtype cast;
2. the model is cast to ``options.dtype`` (in place) and set to eval mode (restored afterwards);
3. one forward (and one backward if ``options.gradients``) captures the chosen sites at the probe
   positions;
4. each (layer, site[, head]) activation matrix gives one ``activation_stats`` row and one
   ``sketches`` row per kernel x estimator; gradients give ``spectra`` rows with ``tensor="grad"``
   (the ``ov`` gradient from hooks on the same pass, ``etl.ov_gradient``).

Where each site and matrix lives is the model's layout (``etl.layouts.fit``): given, or the Hugging Face
family's preset.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from layerlake.core.choices import AttentionProbs, Autocast, Dtype, MatmulPrecision, ModelCall, Tensor
from layerlake.core.layouts import Layout
from layerlake.etl import capture, metrics, sites
from layerlake.etl.errors import ExtractionError, ProbeError
from layerlake.etl.layouts import Fit, fit
from layerlake.etl.ov_gradient import OvGradient
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch
from layerlake.warehouse.gram import pack as pack_gram
from layerlake.warehouse.schema import TABLES

TORCH_DTYPES = {
    Dtype.float32: torch.float32,
    Dtype.bfloat16: torch.bfloat16,
    Dtype.float16: torch.float16,
    Dtype.float64: torch.float64,
}
OUTPUT_TABLES = ("activation_stats", "sketches", "spectra", "matrix_stats", "activations")


def extract_from_model(
    model: nn.Module,
    ref: CheckpointRef,
    weights_sha256: str,
    probe: ProbeBatch,
    options: ExtractOptions,
    spectra_cache: WeightSpectraCache | None = None,
    layout: Layout | Fit | str | None = None,
    live: bool = False,
) -> tuple[dict[str, pa.Table], dict[str, float]]:
    """Every summary of one checkpoint from one pass: ``({table: pa.Table}, {phase: seconds})``.

    Tables are ``activation_stats``, ``sketches`` and ``spectra``, each matching
    ``TABLES[name].arrow_schema()`` (no suite/model partition columns). Phases (``PHASES``):
    ``forward``, ``backward`` (0 without gradients), ``summaries`` (activation stats), ``sketches``
    (Grams), ``svd`` (weight and gradient spectra) and ``matrix_stats``. A loaded checkpoint is moved to
    ``options.device`` and cast to ``options.dtype`` in place; a ``live`` one (a model in training,
    ``layerlake.track``) runs as it is, never moved or cast (its parameters may mix dtypes and devices:
    float32 norms in a bfloat16 model), with ``options`` naming its coarsest dtype. ``spectra_cache`` (given only with a true
    weights hash) supplies weight spectra already taken from the same weights. ``layout`` says where the
    sites and matrices live (a ``Layout``, a preset name, a YAML path, or one already fitted to this
    model); None: the Hugging Face family's preset.
    """
    fitted = layout if isinstance(layout, Fit) else fit(model, layout)
    _check_options(options, fitted, probe, model)
    check_finite_parameters(model)
    device = torch.device(options.device)
    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    timed = Phases(device)
    rows = Rows(ref.step, weights_sha256, probe.probe_id, timed, pass_eps(options, device))
    was_training = model.training
    if not live:
        model.to(device)
    try:
        if options.weight_spectra:
            _add_spectra(rows, fitted, options, "weight", spectra_cache)
        if not live:
            model.to(TORCH_DTYPES[options.dtype])
        model.eval()
        with pass_precision(options, device):
            ids, positions = probe_tensors(probe, device)
            try:
                _pass_rows(rows, model, ids, positions, fitted, options, timed, apart_from_training=live)
            except capture.ReentrantCheckpoint:  # its gradients need a plain backward: the pass again
                _pass_rows(rows, model, ids, positions, fitted, options, timed)
    finally:
        model.train(was_training)
    return rows.tables(), timed.seconds


@contextmanager
def pass_precision(options: ExtractOptions, device: torch.device) -> Iterator[None]:
    """``extract.autocast`` and ``extract.matmul_precision`` around the forward and backward, restored after.

    TF32 exists on NVIDIA GPUs only (Ampere and newer use it): on any other device the option changes
    nothing, and the products stay float32.
    """
    tf32 = options.matmul_precision == MatmulPrecision.tf32 and device.type == "cuda"
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    if tf32:
        matmul.allow_tf32 = True
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.autocast == Autocast.bfloat16):
            yield
    finally:
        if tf32:
            matmul.allow_tf32 = before


def pass_eps(options: ExtractOptions, device: torch.device) -> float:
    """The machine epsilon of the forward and backward: the coarsest of the model's dtype, bfloat16 under
    autocast, and TF32's 2^-10 where TF32 runs (a CUDA device). What activation spectra carry (``eps``)."""
    eps = [torch.finfo(TORCH_DTYPES[options.dtype]).eps]
    if options.autocast == Autocast.bfloat16:
        eps.append(torch.finfo(torch.bfloat16).eps)
    if options.matmul_precision == MatmulPrecision.tf32 and device.type == "cuda":
        eps.append(2.0**-10)
    return max(eps)


def spectra_eps(options: ExtractOptions, device: torch.device, tensor: str) -> float:
    """The machine epsilon of a stored spectrum: its SVD's type (``extract.spectra_precision``), and for a
    gradient also the pass's (:func:`pass_eps`), whichever is coarser."""
    svd = torch.finfo(TORCH_DTYPES[Dtype(options.spectra_precision.value)]).eps
    return max(svd, pass_eps(options, device)) if tensor == Tensor.grad else svd


def check_options(
    options: ExtractOptions, probe: ProbeBatch, model: nn.Module, layout: Layout | str | None = None
) -> Fit:
    """Whether ``options``, ``probe`` and ``layout`` suit ``model``: an ``ExtractionError`` naming the fix
    (or the layout's pattern that fits nothing) if not; the fitted layout if so (a tracked run checks this
    once when it starts, not at each snapshot)."""
    fitted = fit(model, layout)
    _check_options(options, fitted, probe, model)
    return fitted


def _check_options(options: ExtractOptions, fitted: Fit, probe: ProbeBatch, model: nn.Module) -> None:
    """Fail before any work, naming the option and its fix (values of closed sets were checked when
    the options were built; what is left depends on this model and probe)."""
    sites.check_layout_options(options.v_slice, fitted.layout, fitted.shape)
    if "debiased" in options.estimators and probe.n < 4:
        raise ExtractionError(
            f"the debiased estimator needs n >= 4 probe rows; probe {probe.probe_id} has {probe.n}",
            fix="use more probe sequences/positions or extract.estimators=[biased]",
        )
    if fitted.layout.call == ModelCall.hf and not hasattr(model, "get_output_embeddings"):
        raise ExtractionError(
            f"layout {fitted.layout.name!r} calls the model as a Hugging Face one (call: hf), but "
            f"{type(model).__name__} is not one",
            fix="set the layout's call: tokens (model(ids) returns the logits) or tokens_targets (nanoGPT)",
        )
    if options.gradients and fitted.layout.call == ModelCall.hf and model.get_output_embeddings() is None:
        raise ExtractionError(
            "gradients need the language-model loss, but the model has no LM head",
            fix="load a *ForCausalLM model, or set extract.gradients=false",
        )
    check_probe_fits(probe, model, options.gradients)


def token_embedding(model: nn.Module) -> nn.Embedding | None:
    """A Hugging Face model's input embedding, else the model's first ``nn.Embedding`` (the token
    embedding in nanoGPT, litGPT, OLMo-core and torchtitan alike); None if it has none."""
    found = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(found, nn.Embedding):
        return found
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def check_probe_fits(probe: ProbeBatch, model: nn.Module, gradients: bool) -> None:
    """The probe's token ids lie in the model's vocabulary (its first embedding: the token embedding of
    every supported family) and its sequences fit the model's learned positions where it has a fixed
    number (``n_positions``: GPT-2; ``block_size``: nanoGPT); with gradients, each sequence has a next
    token to predict. A ``ProbeError`` naming the fix, before any work: past the table, an embedding
    fails at every snapshot with a bare IndexError."""
    if gradients and probe.seq_len < 2:
        raise ProbeError(
            f"probe {probe.probe_id} has sequences of {probe.seq_len} token: the gradients' loss predicts "
            "each next token, so a sequence needs 2 or more",
            fix="use longer probe sequences, or extract.gradients=false",
        )
    tokens = token_embedding(model)
    if tokens is not None and probe.token_ids:
        low = min(min(seq) for seq in probe.token_ids)
        high = max(max(seq) for seq in probe.token_ids)
        if low < 0 or high >= tokens.num_embeddings:
            raise ProbeError(
                f"probe {probe.probe_id} holds token id {low if low < 0 else high}, outside the model's "
                f"vocabulary of {tokens.num_embeddings} (ids 0 to {tokens.num_embeddings - 1})",
                fix="tokenize the probe with the model's own tokenizer",
            )
    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "block_size", None)
    if isinstance(limit, int) and probe.seq_len > limit:
        raise ProbeError(
            f"probe {probe.probe_id} has sequences of {probe.seq_len} tokens; the model takes at most "
            f"{limit} (its learned positions)",
            fix=f"cut the probe's sequences to {limit} tokens or fewer",
        )


def probe_tensors(probe: ProbeBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's token ids (n_sequences x seq_len, long) and positions (n x 2, long) on ``device``."""
    lengths = {len(seq) for seq in probe.token_ids}
    if probe.n_sequences == 0 or len(lengths) != 1 or probe.n == 0:
        raise ProbeError(
            f"probe {probe.probe_id} must hold equal-length sequences and at least one position "
            f"(sequences: {probe.n_sequences}, lengths: {sorted(lengths)}, positions: {probe.n})",
            fix="rebuild the probe batch with a fixed seq_len",
        )
    positions = torch.tensor(probe.positions, dtype=torch.long).reshape(-1, 2)
    in_range = (
        (positions >= 0).all()
        and (positions[:, 0] < probe.n_sequences).all()
        and (positions[:, 1] < probe.seq_len).all()
    )
    if not in_range:
        raise ProbeError(
            f"probe {probe.probe_id} has positions outside its {probe.n_sequences} x "
            f"{probe.seq_len} token ids",
            fix="rebuild the probe batch",
        )
    ids = torch.tensor(probe.token_ids, dtype=torch.long)
    return ids.to(device), positions.to(device)


def capture_targets(fitted: Fit, wanted: tuple[str, ...]) -> dict[capture.Key, nn.Module]:
    """The modules to hook: one per (layer, capture name); the ``ov`` site captures the map holding V."""
    names = sorted({"value" if s == "ov" else s for s in wanted})
    return {(block.index, name): block.site_module(name) for block in fitted.blocks for name in names}


def _add_activations(rows: Rows, captured: dict, fitted: Fit, options: ExtractOptions) -> None:
    """Stats and sketches of every captured (layer, site[, head]) matrix."""
    layout, shape = fitted.layout, fitted.shape
    for block in fitted.blocks:
        layer = block.index
        for site in options.sites:
            if site != "ov":
                rows.add_activation(layer, site, None, captured[(layer, site)], options)
                continue
            v = sites.split_value_output(captured[(layer, "value")], layout, shape, options.v_slice)
            whole, per_head = sites.ov_activations(v, metrics.as64(block.read("dense")))
            rows.add_activation(layer, "ov", None, whole, options)
            if options.per_head:
                for head in range(shape.n_heads):
                    rows.add_activation(layer, "ov", head, per_head[head], options)


@dataclass(frozen=True)
class Spectrum:
    """One matrix's singular values, and its entry-wise stats where it has its own entries (a parameter,
    or the per-layer OV product; a per-head OV is kept factored and has none)."""

    layer: int
    matrix: str
    head: int | None
    rows: int
    cols: int
    sv: torch.Tensor
    stats: dict | None


def _add_spectra(
    rows: Rows,
    fitted: Fit,
    options: ExtractOptions,
    tensor: str,
    cache: WeightSpectraCache | None = None,
    ov_gradient: OvGradient | None = None,
) -> None:
    """Spectra (and matrix stats) of every matrix of every block, of the weights or of their gradients
    (``ov``: G_h from ``ov_gradient``; ``ov_product_rule``: see ``sites.ov_product_rule_factors``). Weight
    spectra come from ``cache`` when it holds those of the same weights hash."""
    key = (
        rows.common["weights_sha256"], options.per_head, options.v_slice, options.spectra_precision,
        fitted.layout,
    )  # fmt: skip
    spectra = cache.get(key) if cache is not None and tensor == "weight" else None
    if spectra is None:
        spectra = _spectra(fitted, options, tensor, rows.timed, ov_gradient)
        if cache is not None and tensor == "weight":
            cache.put(key, spectra)
    eps = spectra_eps(options, torch.device(options.device), tensor)
    for s in spectra:
        rows.add_spectrum(s.layer, tensor, s.matrix, s.head, s.rows, s.cols, s.sv, eps)
        if s.stats is not None:
            rows.add_matrix_stats(s.layer, tensor, s.matrix, s.head, s.stats)


class WeightSpectraCache:
    """The weight spectra of the last few checkpoints, by weights hash (and the options that shape them):
    a checkpoint whose weights repeat an earlier one's (Pythia serves such duplicate revisions; a tracked
    run snapshots a model that has not stepped) gets them without an SVD. Only for callers whose weights
    hash is the weights' own (``sources.weights_sha256``): the worker keeps one per process, a tracked
    run one per run."""

    def __init__(self, kept: int = 4) -> None:  # about 2 MB per checkpoint at Pythia-160m's shape
        self.kept = kept
        self.entries: OrderedDict[tuple, list[Spectrum]] = OrderedDict()
        self.hits = 0

    def get(self, key: tuple) -> list[Spectrum] | None:
        spectra = self.entries.get(key)
        if spectra is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        return spectra

    def put(self, key: tuple, spectra: list[Spectrum]) -> None:
        self.entries[key] = spectra
        while len(self.entries) > self.kept:
            self.entries.popitem(last=False)


def _spectra(
    fitted: Fit, options: ExtractOptions, tensor: str, timed: Phases, ov_gradient: OvGradient | None = None
) -> list[Spectrum]:
    """Every block's matrices, their singular values computed together (``metrics.batched_svdvals``:
    matrices of one shape in one call, on the model's device, in ``options.spectra_precision``)."""
    found = []
    for block in fitted.blocks:
        matrices = sites.block_matrices(block, fitted.layout, fitted.shape, options.v_slice, tensor)
        if ov_gradient is not None and tensor == "grad":
            matrices.update(ov_gradient_matrices(ov_gradient, block.index))
        found += [
            (block.index, m, h, a, b) for (m, h), (a, b) in matrices.items() if h is None or options.per_head
        ]
    precision = TORCH_DTYPES[Dtype(options.spectra_precision.value)]
    with timed("svd"):
        try:
            values = metrics.batched_svdvals([(a, b) for *_, a, b in found], dtype=precision)
        except torch.linalg.LinAlgError:
            raise_non_finite(found, tensor)
            raise
    with timed("matrix_stats"):
        stats = _entry_stats([(a, b) for _, _, head, a, b in found if head is None])
    spectra = []
    for (layer, matrix, head, a, b), sv in zip(found, values, strict=True):
        own = head is None  # parameters and the per-layer products (a per-head OV has no own entries)
        cols = a.shape[1] if b is None else b.shape[1]
        spectra.append(Spectrum(layer, matrix, head, a.shape[0], cols, sv, next(stats) if own else None))
    return spectra


def check_finite_parameters(model: nn.Module) -> None:
    """An ``ExtractionError`` naming the first parameter holding a NaN or an infinity, if one does: a
    LayerNorm or embedding of NaN makes every activation NaN, and what fails then (an SVD, the attention
    check) would not say that the checkpoint diverged or is corrupt. One pass over the weights, on their
    device, and one wait for it (a GPU is asked once, not once per parameter); cheap beside the spectra."""
    named = [(name, p.detach()) for name, p in model.named_parameters() if p.is_floating_point()]
    finite = [torch.isfinite(p).all() for _, p in named]
    if not finite or bool(torch.stack([f.to(finite[0].device) for f in finite]).all()):
        return
    for (name, _), ok in zip(named, finite, strict=True):
        if not bool(ok):
            raise ExtractionError(
                f"the weights of {name} hold NaN or infinite values: a diverged or corrupt checkpoint",
                fix="check the training's loss up to this step, or leave the step out (steps.only=[...])",
            )


def raise_non_finite(found: list[tuple], tensor: str) -> None:
    """An ``ExtractionError`` naming the first matrix of ``found`` ((layer, matrix, head, a, b) entries)
    that holds a NaN or an infinity, if one does: an SVD of it fails, and the bare LinAlgError would not
    say that the checkpoint diverged or is corrupt."""
    for layer, matrix, head, a, b in found:
        if not all(bool(torch.isfinite(m).all()) for m in (a, b) if m is not None):
            what = "weights" if tensor == "weight" else "gradients (of the probe's loss)"
            raise ExtractionError(
                f"the {what} of layer {layer}'s {matrix}{'' if head is None else f' head {head}'} hold NaN "
                "or infinite values: a diverged or corrupt checkpoint has no spectrum",
                fix="check the training's loss up to this step, or leave the step out (steps.only=[...])"
                + ("" if tensor == "weight" else "; extract.gradients=false keeps the weights' rows"),
            )


def ov_gradient_matrices(ov_gradient: OvGradient, layer: int) -> dict[sites.MatrixKey, sites.Factors]:
    """The ``ov`` gradient rows of one layer: ``G_h`` per head and ``sum_h G_h`` for the layer."""
    g = ov_gradient.g[layer]
    found: dict[sites.MatrixKey, sites.Factors] = {("ov", None): (g.sum(dim=0), None)}
    found.update({("ov", h): (g[h], None) for h in range(g.shape[0])})
    return found


def _entry_stats(matrices: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Iterator[dict]:
    """``metrics.entry_stats`` of each ``a`` (or ``a @ b``), in order, on as many threads as torch uses:
    the sort inside is numpy's, single-threaded and free of the GIL, so on the CPU the other cores would
    idle (on 2 cores, 0.58 s a checkpoint at Pythia-70m's shape one at a time)."""

    def one(pair: tuple[torch.Tensor, torch.Tensor | None]) -> dict:
        a, b = pair
        return metrics.entry_stats(a if b is None else metrics.as64(a) @ metrics.as64(b))

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        return iter(list(pool.map(one, matrices)))


class Rows:
    """Column lists for the output tables (OUTPUT_TABLES), filled row by row, turned into Arrow at the end."""

    def __init__(self, step: int, weights_sha256: str, probe_id: str, timed: Phases, pass_eps: float) -> None:
        self.common = {"step": step, "weights_sha256": weights_sha256}
        self.probe_id = probe_id
        self.timed = timed
        self.pass_eps = pass_eps  # the precision activations were computed in (activation_stats.eps)
        self.cols: dict[str, dict[str, list]] = {
            name: {c: [] for c in TABLES[name].column_names} for name in OUTPUT_TABLES
        }

    def _append(self, table: str, **values) -> None:
        for column, items in self.cols[table].items():
            items.append(self.common[column] if column in self.common else values[column])

    def add_activation(
        self, layer: int, site: str, head: int | None, x: torch.Tensor, options: ExtractOptions
    ) -> None:
        """One ``activation_stats`` row and one ``sketches`` row per kernel and estimator."""
        key = {"layer": layer, "site": site, "head": head, "probe_id": self.probe_id}
        if not bool(torch.isfinite(x).all()):
            raise ExtractionError(
                f"the activations at layer {layer}'s {site}{'' if head is None else f' head {head}'} hold NaN or "
                "infinite values, from finite weights: the forward overflowed",
                fix="extract in float32 where it ran in less (executor.dtype=float32), or leave the step out (steps.only=[...])",
            )
        with self.timed("summaries"):
            summary = metrics.activation_summary(x, options.near_zero_eps)
        summary["sv"] = np.asarray(summary["sv"], dtype=np.float64)
        self._append("activation_stats", **key, **summary, eps=self.pass_eps)
        if options.store_activations and head is None:
            values = x.detach().to(torch.float16).cpu().numpy().astype("<f2", copy=False)
            self._append("activations", layer=layer, site=site, probe_id=self.probe_id,
                         n=summary["n"], d=summary["d"], x=values.tobytes())  # fmt: skip
        for kernel in options.kernels:
            with self.timed("sketches"):
                k = metrics.gram(x, kernel)
            for estimator in options.estimators:
                # Stored packed (upper triangle, off-diagonal x sqrt 2): same dot products, half the bytes.
                with self.timed("sketches"):
                    centred = metrics.center(k, estimator).to(torch.float32).cpu().numpy()
                    g = torch.from_numpy(pack_gram(centred))
                self._append(
                    "sketches",
                    **key,
                    kernel=kernel,
                    estimator=estimator,
                    n=summary["n"],
                    d=summary["d"],
                    gram=g.numpy(),
                    gram_norm=metrics.frobenius(g),
                )

    def add_spectrum(
        self,
        layer: int,
        tensor: str,
        matrix: str,
        head: int | None,
        n_rows: int,
        n_cols: int,
        sv: torch.Tensor,
        eps: float,
    ) -> None:
        self._append(
            "spectra",
            layer=layer,
            tensor=tensor,
            matrix=matrix,
            head=head,
            rows=n_rows,
            cols=n_cols,
            sv=sv.cpu().numpy(),
            eps=eps,
            probe_id=self.probe_id if tensor == "grad" else None,
        )

    def add_matrix_stats(self, layer: int, tensor: str, matrix: str, head: int | None, stats: dict) -> None:
        last = len(self.cols["spectra"]["rows"]) - 1  # the spectrum row just added: the same matrix
        self._append(
            "matrix_stats",
            layer=layer,
            tensor=tensor,
            matrix=matrix,
            head=head,
            rows=self.cols["spectra"]["rows"][last],
            cols=self.cols["spectra"]["cols"][last],
            probe_id=self.probe_id if tensor == "grad" else None,
            **stats,
        )

    def tables(self) -> dict[str, pa.Table]:
        return {name: _to_arrow(name, cols) for name, cols in self.cols.items()}


def _to_arrow(name: str, cols: dict[str, list]) -> pa.Table:
    """Columns -> a table with the warehouse schema; list columns go in as one flat numpy buffer."""
    schema = TABLES[name].arrow_schema()
    arrays = []
    for f in schema:
        values = cols[f.name]
        if pa.types.is_list(f.type):
            arrays.append(_list_array(values, f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _list_array(values: list[np.ndarray], type_: pa.ListType) -> pa.ChunkedArray:
    """A list column from per-row numpy arrays, chunked so each chunk's int32 offsets stay below 2**31."""
    item = type_.value_type.to_pandas_dtype()
    chunks, group, size = [], [], 0
    for v in [*values, None]:
        if v is None or (group and size + len(v) > _MAX_CHUNK_VALUES):
            offsets = np.zeros(len(group) + 1, dtype=np.int32)
            np.cumsum([len(g) for g in group], out=offsets[1:])
            flat = np.concatenate(group).astype(item) if group else np.zeros(0, dtype=item)
            chunks.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_.value_type)))
            group, size = [], 0
        if v is not None:
            group.append(v)
            size += len(v)
    return pa.chunked_array([c.cast(type_) for c in chunks], type=type_)


_MAX_CHUNK_VALUES = 2**30


PHASES = ("forward", "backward", "summaries", "sketches", "svd", "matrix_stats")


class Phases:
    """Seconds spent per phase of one pass (``PHASES``); ``with timed("svd"): ...`` adds to one, waiting
    for the GPU's queued work at the end so it is counted where it was asked for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] += time.perf_counter() - start


def _pass_rows(
    rows: Rows, model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, fitted: Fit,
    options: ExtractOptions, timed: Phases, apart_from_training: bool = False,
) -> None:  # fmt: skip
    """The probe's pass (``capture.run_pass``) and the rows it gives: activation summaries and sketches,
    and gradient spectra (read while the pass's ``.grad`` is there)."""
    with _grads_enabled(model, options.gradients):
        ov_gradient = OvGradient(fitted) if fitted.layout.probs != AttentionProbs.none else None
        captured, pass_times = capture.run_pass(
            model, ids, positions, capture_targets(fitted, options.sites),
            gradients=options.gradients, batch_size=options.batch_size, call=fitted.layout.call,
            ov_gradient=ov_gradient, apart_from_training=apart_from_training,
        )  # fmt: skip
        timed.seconds.update(pass_times)
        _add_activations(rows, captured, fitted, options)
        if options.gradients:
            _add_spectra(rows, fitted, options, "grad", ov_gradient=ov_gradient)


@contextmanager
def _grads_enabled(model: nn.Module, gradients: bool) -> Iterator[None]:
    """With gradients: every parameter requires grad and starts at None; both restored/freed after."""
    if not gradients:
        yield
        return
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(True)
            p.grad = None
        yield
    finally:
        for p, flag in saved:
            p.grad = None
            p.requires_grad_(flag)
