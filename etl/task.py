"""The plain values that travel between the planner, the executors and the task function.

Everything here is a frozen dataclass of plain Python values (no tensors, no DictConfig), so a
task pickles cheaply into a Ray worker and its identity can be hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from layerlake.core.choices import (
    Autocast,
    Dtype,
    Estimator,
    Kernel,
    MatmulPrecision,
    Site,
    SpectraPrecision,
    SuiteSource,
    VSlice,
    check_device,
)
from layerlake.core.hashing import stable_hash


@dataclass(frozen=True)
class CheckpointRef:
    """Where one checkpoint (one model at one step) lives. Its identity is its weights' sha256,
    known only once loaded; ``step`` is a label."""

    suite: str
    model: str
    step: int
    revision: str  # e.g. "step1000"
    tokens_seen: int
    source: str  # a SuiteSource (local | hf) for a saved checkpoint, or "live" for a model that trains
    location: str  # local: absolute folder of the checkpoint; hf: the hub repo id; live: the run id
    run_id: str = ""  # the run its rows belong to (default: extract_run_id(suite, model))
    trust_remote_code: bool = False
    layout: str = ""  # a layout preset's name or a layout YAML file ("": the Hugging Face family's preset)
    constructor: str = ""  # a model that is not Hugging Face's: JSON {"target": ..., "kwargs": {...}}

    @property
    def stored_location(self) -> str:
        """``location`` as it is stored: no path of this machine (``<suite>/<model>/<revision>`` for a
        local folder, the repo id for the hub), so moving the data folder changes nothing stored."""
        if self.source == SuiteSource.local:
            return f"{self.suite}/{self.model}/{self.revision}"
        return self.location


def extract_run_id(suite: str, model: str) -> str:
    """The run of a suite model whose checkpoints are extracted after the fact (``default_run_id``)."""
    from layerlake.warehouse.writer import default_run_id

    return default_run_id(suite, model)


@dataclass(frozen=True)
class ProbeBatch:
    """The fixed batch every checkpoint of a suite sees: token ids plus the positions read out.

    ``positions`` lists (sequence index, token index) pairs in the order rows are stacked: the
    activation matrix of a site is ``n = len(positions)`` rows by ``d`` features.
    """

    probe_id: str
    source: str
    token_ids: tuple[tuple[int, ...], ...]  # n_sequences x seq_len
    positions: tuple[tuple[int, int], ...]
    rule: str  # last | all | sample
    seed: int | None = None

    @property
    def n_sequences(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        return len(self.token_ids[0]) if self.token_ids else 0

    @property
    def n(self) -> int:
        return len(self.positions)


OV_GRADIENT = "dL/dM_h"  # what the ov grad rows hold (etl.ov_gradient); the product rule is ov_product_rule


@dataclass(frozen=True)
class ExtractOptions:
    """What one pass computes (from ``conf/extract``), plus device and dtype (from ``conf/executor``)."""

    sites: tuple[Site, ...] = tuple(Site)
    per_head: bool = True
    v_slice: VSlice = VSlice.true_v
    gradients: bool = True  # the defaults are conf.schema.ExtractConfig's (tests/test_config.py checks)
    weight_spectra: bool = True
    kernels: tuple[Kernel, ...] = (Kernel.linear,)
    estimators: tuple[Estimator, ...] = tuple(Estimator)
    near_zero_eps: float = 1e-3
    device: str = "cpu"
    dtype: Dtype = Dtype.float32
    torch_threads: int | None = None
    batch_size: int | None = None  # sequences per forward chunk; None = the whole probe at once
    store_activations: bool = False  # the ``activations`` table: each whole-layer site's probe rows
    spectra_precision: SpectraPrecision = SpectraPrecision.float64  # the SVDs' floating-point type
    matmul_precision: MatmulPrecision = MatmulPrecision.float32  # tf32: TF32 products on Ampere+ GPUs
    autocast: Autocast = Autocast.none  # bfloat16: torch.autocast around the forward and backward

    def __post_init__(self) -> None:
        """Closed sets become ``Choice`` members (a wrong value is a ``ConfigError`` naming the option)."""
        for name, kind in (("sites", Site), ("kernels", Kernel), ("estimators", Estimator)):
            object.__setattr__(
                self, name, tuple(kind.parse(v, f"extract.{name}") for v in getattr(self, name))
            )
        object.__setattr__(self, "v_slice", VSlice.parse(self.v_slice, "extract.v_slice"))
        object.__setattr__(self, "dtype", Dtype.parse(self.dtype, "executor.dtype"))
        precision = SpectraPrecision.parse(self.spectra_precision, "extract.spectra_precision")
        object.__setattr__(self, "spectra_precision", precision)
        matmul = MatmulPrecision.parse(self.matmul_precision, "extract.matmul_precision")
        object.__setattr__(self, "matmul_precision", matmul)
        object.__setattr__(self, "autocast", Autocast.parse(self.autocast, "extract.autocast"))
        check_device(self.device)

    def config_hash(self) -> str:
        """Hash of what changes the numbers (device, threads and chunking do not)."""
        skip = ("device", "torch_threads", "batch_size")
        payload = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        # Options added later hash as before while they keep their default: stored hashes stay valid.
        if not self.store_activations:
            payload.pop("store_activations")
        for name, default in (
            ("spectra_precision", SpectraPrecision.float64),
            ("matmul_precision", MatmulPrecision.float32),
            ("autocast", Autocast.none),
        ):
            if getattr(self, name) == default:
                payload.pop(name)
        if self.gradients:  # the ov gradient's definition (G_h = dL/dM_h, no longer the product rule): rows
            payload["ov_gradient"] = OV_GRADIENT  # taken with gradients before it are re-extracted
        return stable_hash(payload)


@dataclass(frozen=True)
class ExtractTask:
    """One unit of work: one checkpoint, one probe, one set of options."""

    ref: CheckpointRef
    probe: ProbeBatch
    options: ExtractOptions
    code_version: str = field(default="")

    @property
    def task_id(self) -> str:
        """Deterministic, and made of content only (never a path): one checkpoint of one run seen
        through one probe is one task, so a re-run finds (and skips) what was committed before, wherever
        the data folder has moved. The options are not part of it: extracting a checkpoint again with
        other options replaces its rows (the driver compares ``options.config_hash()``), and so does a
        checkpoint whose files changed (the driver compares the hashes of its weights and config.json)."""
        from layerlake.warehouse.layout import checkpoint_task_id

        ref = self.ref
        return checkpoint_task_id(ref.suite, ref.model, ref.run_id, ref.revision, self.probe.probe_id)


def _plain(value: object) -> object:
    """Choice members as their string values (tuples as lists), for hashing."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


@dataclass
class TaskResult:
    """What a task returns to the driver: one Arrow table per warehouse table (shard columns only,
    without the ``suite``/``model`` partition columns), the checkpoint's identity, and timings."""

    task_id: str
    ref: CheckpointRef
    weights_sha256: str
    tables: dict  # table name -> pyarrow.Table matching warehouse.schema.<table>.arrow_schema()
    timings: dict  # phase -> seconds: load, forward, backward, svd, total
    n_params: int = 0
    placement: dict = field(default_factory=dict)  # pid, Ray GPU ids, device: where it ran
    # a local checkpoint's files (weights, config.json): {"files": {name: {"size", "mtime_ns", "sha256"}}}
    weights_file: dict = field(default_factory=dict)
