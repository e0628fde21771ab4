"""The warehouse's data contract: every table, its columns, their types and meaning.

Names in here (tables, columns, and the site / matrix / metric names that land in rows) are
part of the stored data: changing one is a schema change and bumps ``SCHEMA_VERSION``.

Layout on disk (Parquet, one immutable file per task and table, never rewritten in place)::

    <root>/<table>/<suite>/<model>/<task_id>-<sha256[:16]>.parquet   (warehouse.layout.SHARD_PATTERN)
    <root>/_manifest/commits.jsonl      one JSON line per commit: which files make each task
    <root>/_staging/                    files being written; never read

Every file holds the identity columns ``suite``, ``model`` and ``run_id`` itself (the writer fills
them), so every reader (DuckDB, pandas, polars, pyarrow, ``datasets``) sees the same columns; the
folders are plain names, not ``key=value`` partitions, so no reader infers columns from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 4  # bump when a table, a column or a stored encoding changes
# 1: suite and model in hive partition folders only; task ids hashed the checkpoint's folder path.
# 2: suite, model and run_id in every file; content-named files; the runs and scalars tables.
# 3: sketches.gram stored as little-endian float32 bytes (a BLOB), not a list of floats (warehouse.gram).
# 4: scalars.rank (the process of a distributed run that logged a value; NULL in older rows);
#    activation_stats.eps and spectra.eps: the precision each spectrum was computed in (the rank tolerance).
IDENTITY_COLUMNS = ("suite", "model", "run_id")
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False
    stored_as_bytes: bool = False  # a float32 list kept in files as its little-endian bytes (warehouse.gram)

    @property
    def file_type(self) -> pa.DataType:
        """The column's type in a stored file: ``type``, or binary for a list stored as bytes."""
        return pa.binary() if self.stored_as_bytes else self.type

    @property
    def bytes_name(self) -> str:
        """The view column showing the stored bytes of a list stored as bytes (``gram`` -> ``gram_bytes``)."""
        return f"{self.name}_bytes"


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]  # the table's own columns (what a producer builds)

    def arrow_schema(self) -> pa.Schema:
        """The schema of what a producer hands the writer: the table's own columns."""
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def file_schema(self) -> pa.Schema:
        """The schema of a stored file and of its view: the identity columns, then the table's own."""
        return pa.schema([pa.field(c.name, c.file_type, nullable=c.nullable) for c in self.all_columns])

    def view_schema(self) -> pa.Schema:
        """The columns of the table's view: a list stored as bytes shows as the list and, beside it, as
        the bytes (``gram`` and ``gram_bytes``)."""
        fields = []
        for c in self.all_columns:
            fields.append(pa.field(c.name, c.type, nullable=c.nullable))
            if c.stored_as_bytes:
                fields.append(pa.field(c.bytes_name, pa.binary(), nullable=c.nullable))
        return pa.schema(fields)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def all_columns(self) -> tuple[Column, ...]:
        return (*IDENTITY, *self.columns)


def _c(
    name: str, type_: pa.DataType, doc: str, nullable: bool = False, stored_as_bytes: bool = False
) -> Column:
    return Column(name, type_, doc, nullable, stored_as_bytes)


IDENTITY = (
    _c("suite", pa.string(), "the suite (models trained alike), e.g. pythia or embedded"),
    _c("model", pa.string(), "the model of the suite, e.g. pythia-160m-deduped"),
    _c(
        "run_id",
        pa.string(),
        "the run the row belongs to (table runs): a training run tracked live, or the checkpoints of one "
        "suite model extracted after the fact",
    ),
)
_STEP = _c(
    "step", pa.int64(), "training step the checkpoint is labelled with (an attribute, not its identity)"
)
_LAYER = _c("layer", pa.int32(), "0-based transformer block index")
_HEAD = _c("head", pa.int32(), "attention head index; NULL for the whole layer", nullable=True)
_PROBE = _c("probe_id", pa.string(), "hash of the probe's token ids and position rule")
_WEIGHTS = _c("weights_sha256", pa.string(), "sha256 of the checkpoint's weights: the checkpoint's identity")

CHECKPOINTS = Table(
    name="checkpoints",
    doc="One row per extracted checkpoint (model revision).",
    key=("run_id", "revision", "probe_id"),
    columns=(
        _c("revision", pa.string(), "revision name, e.g. step1000"),
        _STEP,
        _c("tokens_seen", pa.int64(), "tokens the model had been trained on at this step"),
        _c(
            "source",
            pa.string(),
            "where the rows were taken from: local or hf (a checkpoint), live (a training run)",
        ),
        _c(
            "location",
            pa.string(),
            "where it was loaded from, with no path of the machine: <suite>/<model>/<revision> under the suites "
            "folder, a hub repo id, or the run id of a live run",
        ),
        _WEIGHTS,
        _c("n_params", pa.int64(), "number of parameters"),
        _c(
            "architecture",
            pa.string(),
            "a Hugging Face model's config model_type (gpt_neox, llama, mistral, qwen2, olmo, olmo2, gpt2), "
            "else its layout's name (nanogpt, litgpt, olmo_core, torchtitan_llama or the user's; "
            "docs/families.md)",
        ),
        _c("n_layers", pa.int32(), "number of transformer blocks"),
        _c("d_model", pa.int32(), "hidden size"),
        _c("n_heads", pa.int32(), "attention heads"),
        _c("d_head", pa.int32(), "head dimension"),
        _c("config_json", pa.string(), "the model's config.json as text"),
        _PROBE,
        _c("task_id", pa.string(), "id of the extraction task that produced this row"),
    ),
)

PROBES = Table(
    name="probes",
    doc="One row per probe batch: the fixed token sequences and position rule every checkpoint sees.",
    key=("run_id", "probe_id"),
    columns=(
        _PROBE,
        _c("source", pa.string(), "where the text came from: embedded | file:<path> | hub:<dataset>"),
        _c("n_sequences", pa.int32(), "sequences in the batch"),
        _c("seq_len", pa.int32(), "tokens per sequence"),
        _c("positions", pa.string(), "position rule: last | all | sample"),
        _c("n", pa.int32(), "probe rows per activation matrix (sequences x positions)"),
        _c("seed", pa.int64(), "seed of the sample rule", nullable=True),
    ),
)

ACTIVATION_STATS = Table(
    name="activation_stats",
    doc="Summaries of one site's activations at the probe positions (an n x d matrix).",
    key=("run_id", "step", "weights_sha256", "layer", "site", "head", "probe_id"),
    columns=(
        _STEP,
        _WEIGHTS,
        _LAYER,
        _c("site", pa.string(), "canonical site name (layerlake.core.choices.Site)"),
        _HEAD,
        _PROBE,
        _c("n", pa.int32(), "rows: probe positions"),
        _c("d", pa.int32(), "columns: features"),
        _c("mean_norm", pa.float64(), "mean L2 norm of the rows"),
        _c("rms", pa.float64(), "root mean square of all entries"),
        _c("std", pa.float64(), "standard deviation of all entries"),
        _c("max_abs", pa.float64(), "largest absolute entry"),
        _c(
            "kurtosis",
            pa.float64(),
            "excess kurtosis of all entries (0 for a Gaussian); NULL for a constant matrix",
            nullable=True,
        ),
        _c("frac_near_zero", pa.float64(), "share of entries with |x| <= near_zero_eps * rms"),
        _c(
            "sv",
            pa.list_(pa.float64()),
            "singular values of the column-centred n x d matrix (float64 SVD), descending, min(n, d) of them; "
            "values <= max(sv) * max(n, d) * eps are the rounding of the pass that computed the activations: "
            "numerical_rank(sv, n, d, eps) and condition_number(sv, n, d, eps) ignore them",
        ),
        _c(
            "eps",
            pa.float64(),
            "machine epsilon of the floating-point type the activations were computed in: 2^-23 for a float32 "
            "pass (the default), 2^-7 for bfloat16 (executor.dtype or extract.autocast=bfloat16), 2^-10 for "
            "float16, 2^-52 for float64; rows migrated from schema 3 or older get 2^-23, the default pass's",
        ),
    ),
)

SKETCHES = Table(
    name="sketches",
    doc=(
        "Centred n x n Gram matrix of a site's probe rows, stored packed (warehouse.gram), so that CKA "
        "between any two sketches of the same probe, kernel and estimator is a normalised dot product."
    ),
    key=(
        "run_id",
        "step",
        "weights_sha256",
        "layer",
        "site",
        "head",
        "probe_id",
        "kernel",
        "estimator",
    ),
    columns=(
        _STEP,
        _WEIGHTS,
        _LAYER,
        _c("site", pa.string(), "canonical site name"),
        _HEAD,
        _PROBE,
        _c("kernel", pa.string(), "linear | rbf"),
        _c("estimator", pa.string(), "biased (H K H) | debiased (U-centred K)"),
        _c("n", pa.int32(), "probe rows"),
        _c("d", pa.int32(), "features of the activation the Gram was computed from"),
        _c(
            "gram",
            pa.list_(pa.float32()),
            "the centred Gram matrix packed: diagonal, then sqrt(2) x the upper triangle row by row, "
            "n(n+1)/2 values (warehouse.gram.unpack gives the n x n matrix; dot products are preserved). "
            "Files hold them as one BLOB of little-endian float32 (numpy.frombuffer(b, '<f4')), which the "
            "view also shows as gram_bytes: cka_bytes(a.gram_bytes, b.gram_bytes, ...) reads that, the fast "
            "way; gram is decoded only when a query selects it",
            stored_as_bytes=True,
        ),
        _c("gram_norm", pa.float64(), "Frobenius norm of the stored matrix (sqrt of its self dot product)"),
    ),
)

_TENSOR = _c(
    "tensor",
    pa.string(),
    "weight | grad: the matrix, or the gradient of the mean next-token loss on the probe batch. "
    "ov is a product, not a parameter: its grad is the gradient with respect to the product, "
    "G_h = sum over probe-batch positions of delta (A_h X)^T per head (delta: the gradient at W_O's output; "
    "A_h X: head h's attention-weighted value input), sum_h G_h per layer (etl.ov_gradient); absent for a "
    "layout without attention probabilities (probs: none). ov_product_rule (grad only) is "
    "gO W_V + W_O gV (per head gO_h W_V_h + W_O_h gV_h), how W_O W_V moves along its factors' gradients "
    "(etl.sites.ov_product_rule_factors)",
)
_MATRIX = _c(
    "matrix",
    pa.string(),
    "canonical matrix name (layerlake.core.choices.Matrix); ov = W_O_h W_V_h per head, W_O W_V per layer; "
    "ov_product_rule: grad rows only",
)
_ROWS = _c("rows", pa.int32(), "matrix rows")
_COLS = _c("cols", pa.int32(), "matrix columns")
_GRAD_PROBE = _c("probe_id", pa.string(), "probe the gradient was taken on; NULL for weights", nullable=True)
_A_MATRIX = (
    _STEP,
    _WEIGHTS,
    _LAYER,
    _TENSOR,
    _MATRIX,
    _HEAD,
    _ROWS,
    _COLS,
)  # which matrix of which checkpoint

SPECTRA = Table(
    name="spectra",
    doc=(
        "Singular values of a weight matrix or of its gradient (float64, descending). A checkpoint's weight "
        "rows are stored once, whatever probes it was extracted with (probe_id NULL); a gradient is taken on "
        "a probe batch, so each probe has its own gradient rows."
    ),
    key=("run_id", "step", "weights_sha256", "layer", "tensor", "matrix", "head", "probe_id"),
    columns=(
        *_A_MATRIX,
        _c(
            "sv",
            pa.list_(pa.float64()),
            "singular values (float64 SVD), descending, min(rows, cols) of them; values <= max(sv) * "
            "max(rows, cols) * eps are rounding noise: numerical_rank(sv, rows, cols, eps) and "
            "condition_number(sv, rows, cols, eps) ignore them",
        ),
        _c(
            "eps",
            pa.float64(),
            "machine epsilon of the arithmetic the values carry: the SVD's for weights (2^-52; 2^-23 with "
            "extract.spectra_precision=float32), the coarser of the SVD's and the pass's for gradients (2^-23 "
            "for a float32 forward and backward, 2^-7 for bfloat16); rows migrated from schema 3 or older get "
            "the default options' (2^-52 for weights, 2^-23 for gradients)",
        ),
        _GRAD_PROBE,
    ),
)

ACTIVATIONS = Table(
    name="activations",
    doc=(
        "A whole-layer site's probe activations themselves (extract.store_activations=true; off by default): "
        "what pwcca() needs, which the Gram sketches cannot give."
    ),
    key=("run_id", "step", "weights_sha256", "layer", "site", "probe_id"),
    columns=(
        _STEP,
        _WEIGHTS,
        _LAYER,
        _c("site", pa.string(), "site name (layerlake.core.choices.Site); whole layers only (no heads)"),
        _c("probe_id", pa.string(), "the probe batch whose rows these are"),
        _c("n", pa.int32(), "probe rows"),
        _c("d", pa.int32(), "features"),
        _c(
            "x",
            pa.binary(),
            "the n x d activations, float16 little-endian, row-major (numpy.frombuffer(x, '<f2').reshape(n, d)), "
            "as computed (not centred)",
        ),
    ),
)

# matrix_stats and activations were added beside the tables of schema 2 without a version bump: a new
# table changes no stored file, older readers skip its files (views.py reads the tables it knows), and a
# warehouse without it has it empty.
MATRIX_STATS = Table(
    name="matrix_stats",
    doc=(
        "Entry-wise statistics of a weight matrix or of its gradient (pico-analyze's sparsity measures), "
        "for every parameter matrix and the per-layer OV product (not per head: that product is never formed)."
    ),
    key=("run_id", "step", "weights_sha256", "layer", "tensor", "matrix", "head", "probe_id"),
    columns=(
        *_A_MATRIX,
        _c(
            "gini",
            pa.float64(),
            "Gini coefficient of the entries' magnitudes x = |w| sorted ascending: sum_i (2i - n - 1) x_(i) / "
            "(n sum_i x_i); 0 = all equal, near 1 = a few entries hold the mass (0 for an all-zero matrix)",
        ),
        _c(
            "hoyer",
            pa.float64(),
            "Hoyer sparsity (sqrt(n) - ||w||_1 / ||w||_2) / (sqrt(n) - 1): 0 = all entries equal in magnitude, "
            "1 = one nonzero entry (NULL for an all-zero matrix or a single entry)",
            nullable=True,
        ),
        _c("inf_norm", pa.float64(), "max_ij |w_ij| (torch.norm(W, p=inf) as pico-analyze takes it)"),
        _GRAD_PROBE,
    ),
)

IMPORTED_METRICS = Table(
    name="imported_metrics",
    doc="Per-layer metrics computed elsewhere and imported in long form, with their source recorded.",
    key=("run_id", "source", "step", "layer", "site", "metric"),
    columns=(
        _c("source", pa.string(), "name given at import, e.g. pythia-paper"),
        _STEP,
        _LAYER,
        _c("site", pa.string(), "site or module name as given by the source"),
        _c("metric", pa.string(), "metric name as given by the source, e.g. cka_scores"),
        _c("value", pa.float64(), "the value", nullable=True),
    ),
)

RUNS = Table(
    name="runs",
    doc=(
        "One row per run: a training run tracked live (layerlake.track), or the checkpoints of one suite "
        "model extracted after the fact. Its status is rewritten as the run goes on."
    ),
    key=("run_id",),
    columns=(
        _c(
            "kind", pa.string(), "train (tracked while it trained), extract (checkpoints) or import (metrics)"
        ),
        _c("status", pa.string(), "running, finished, failed or killed"),
        _c("seed", pa.int64(), "the training seed, where known", nullable=True),
        _c("started_at", TIMESTAMP, "when the run started (UTC)"),
        _c("ended_at", TIMESTAMP, "when it finished, failed or was found killed (UTC)", nullable=True),
        _c("host", pa.string(), "the machine it ran on"),
        _c("pid", pa.int64(), "its process id there (tells a killed run from a running one)", nullable=True),
        _c("code_version", pa.string(), "the layerlake version that wrote it"),
        _c(
            "git_commit",
            pa.string(),
            "the commit of the code, when it ran from a git checkout",
            nullable=True,
        ),
        _c("git_dirty", pa.bool_(), "whether that checkout had uncommitted changes", nullable=True),
        _c("config_json", pa.string(), "the run's whole config as JSON"),
        _c("overrides", pa.list_(pa.string()), "the Hydra overrides it ran with (empty outside Hydra)"),
        _c("sweep_dir", pa.string(), "the Hydra sweep folder, for a job of a multirun", nullable=True),
        _c("job_num", pa.int32(), "the job's number in its Hydra multirun", nullable=True),
        _c("probe_id", pa.string(), "the probe its snapshots run through", nullable=True),
        _c("error", pa.string(), "why it failed", nullable=True),
    ),
)

SCALARS = Table(
    name="scalars",
    doc="Numbers a run logged per step: loss, learning rate, gradient norm, tokens seen, anything.",
    key=("run_id", "step", "name", "rank"),
    columns=(
        _STEP,
        _c("name", pa.string(), "what was logged, e.g. loss, lr, grad_norm, tokens_seen"),
        _c("value", pa.float64(), "the value"),
        _c("logged_at", TIMESTAMP, "when it was logged (UTC)"),
        _c(
            "rank",
            pa.int32(),
            "the process (torch.distributed rank) whose own value this is; NULL for the run's value: a "
            "run of one process, or a value reduced over the ranks (log(..., reduce='mean'))",
            nullable=True,
        ),
    ),
)

# Tags and notes a user gives a run (``layerlake runs tag`` / ``runs note``). Added after schema 4
# without a version bump: a warehouse without them reads them as empty tables, and an older layerlake
# skips their files (it shows only the tables it knows), so nothing stored needs rewriting.
RUN_TAGS = Table(
    name="run_tags",
    doc="Labels a user gave a run (``layerlake runs tag RUN key=value``): one row per key, the latest value.",
    key=("run_id", "key"),
    columns=(
        _c("key", pa.string(), "the tag's name, e.g. group or verdict"),
        _c("value", pa.string(), "its value (text)"),
        _c("tagged_at", TIMESTAMP, "when it was set (UTC)"),
    ),
)

RUN_NOTES = Table(
    name="run_notes",
    doc='Free-text notes on a run (``layerlake runs note RUN "text"``), oldest first.',
    key=("run_id", "noted_at"),
    columns=(
        _c("note", pa.string(), "the note"),
        _c("noted_at", TIMESTAMP, "when it was written (UTC)"),
    ),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RUNS,
        SCALARS,
        RUN_TAGS,
        RUN_NOTES,
        CHECKPOINTS,
        PROBES,
        ACTIVATION_STATS,
        SKETCHES,
        SPECTRA,
        MATRIX_STATS,
        ACTIVATIONS,
        IMPORTED_METRICS,
    )
}


def table(name: str) -> Table:
    """The table called ``name``; a clear error lists the known ones otherwise."""
    try:
        return TABLES[name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise KeyError(f"unknown table {name!r}; the warehouse has: {known}") from None
