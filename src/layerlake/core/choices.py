"""Every closed set of values, one ``Enum`` each: the single list that the config schemas, the command
line, the SQL parameter types and the extraction code all check against.

Members are strings (``Site.ov == "ov"``), so they print, hash, compare and serialise as their value.
Names that land in stored rows (sites, matrices, tensors, estimators, kernels, run kinds and statuses)
are part of the data contract: changing one is a schema change.
"""

from __future__ import annotations

import difflib
import re
from enum import Enum

from layerlake.core.errors import ConfigError


class Choice(str, Enum):
    """A string enum whose members carry a one-line ``doc``."""

    doc: str

    def __new__(cls, value: str, doc: str = "") -> Choice:
        member = str.__new__(cls, value)
        member._value_ = value
        member.doc = doc
        return member

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls, value: object, what: str) -> Choice:
        """``value`` as a member; a ``ConfigError`` naming ``what``, the choices and the nearest one."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"{what} {value!r} is not one of: {', '.join(cls.values())}{did_you_mean(value, cls.values())}",
                fix=f"set {what} to one of: {', '.join(cls.values())}",
            ) from None


def did_you_mean(value: object, known: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known value, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Architecture(Choice):
    """The architectures the embedded suite trains (a hub suite's checkpoints say their own)."""

    gpt_neox = (
        "gpt_neox",
        "Pythia's: parallel residual, rotary on a quarter of each head, fused QKV interleaved per head",
    )
    llama = "llama", "LLaMA-style: RMSNorm, SwiGLU MLP, full rotary, grouped-query attention (n_kv_heads)"
    gpt2 = "gpt2", "GPT-2: learned positions, GELU MLP, Conv1D weights, fused QKV stacked [Q | K | V]"


class StepSchedule(Choice):
    all = "all", "every checkpoint the hub lists"
    log_spaced = (
        "log_spaced",
        "about suite.revisions.count checkpoints spaced evenly in log(step), first and last kept",
    )
    every_kth = "every_kth", "every suite.revisions.every-th checkpoint in step order, first and last kept"


class ExecutorKind(Choice):
    local = "local", "an in-process loop (debugging; GPU machines without Ray)"
    ray = "ray", "Ray tasks on a local or remote cluster, one CPU or one GPU each"


class Dtype(Choice):
    float32 = "float32", "32-bit float"
    bfloat16 = "bfloat16", "bfloat16"
    float16 = "float16", "16-bit float"
    float64 = "float64", "64-bit float"


class SpectraPrecision(Choice):
    float64 = "float64", "singular values computed in float64 (the default)"
    float32 = "float32", "singular values computed in float32: faster, see docs/design.md for its error"


class MatmulPrecision(Choice):
    """How float32 matrix multiplies of the forward and backward run (``extract.matmul_precision``)."""

    float32 = "float32", "full float32 products (the default)"
    tf32 = (
        "tf32",
        "TensorFloat-32 products (10-bit mantissa) on an Ampere or newer NVIDIA GPU; no effect on the CPU or "
        "older GPUs, whose products stay float32",
    )


class Autocast(Choice):
    """Mixed precision around the forward and backward (``extract.autocast``)."""

    none = "none", "every op in the model's dtype (executor.dtype; the default)"
    bfloat16 = (
        "bfloat16",
        "torch.autocast to bfloat16: matrix multiplies (and what autocast lists) in bfloat16, on the CPU too",
    )


class SpectraMethod(Choice):
    """How a float64 spectrum is computed (``etl.metrics.singular_values``); all store the same values to
    about 1e-12 relative (benchmarks/RESULTS.md, "Spectra fast and exact")."""

    gram = (
        "gram",
        "eigenvalues of the float64 Gram of the short side, where their spread lets them be exact; svdvals "
        "for the other matrices",
    )
    gram_deflated = (
        "gram_deflated",
        "the Gram's eigenvalues where they are exact, the rest from the matrix restricted to the Gram's "
        "eigenvectors of the others (Rayleigh-Ritz), again by its Gram: symmetric eigensolvers only",
    )
    svd = "svd", "torch.linalg.svdvals of every matrix, on its tall side (the default)"


class Estimator(Choice):
    biased = "biased", "biased HSIC: the doubly centred Gram H K H (Kornblith et al. 2019; the paper's)"
    debiased = "debiased", "unbiased HSIC: the U-centred Gram (Szekely-Rizzo; Song et al. 2012)"


class Kernel(Choice):
    linear = "linear", "K = X X^T"
    rbf = "rbf", "Gaussian kernel, sigma = median pairwise distance"


class VSlice(Choice):
    true_v = "true_v", "the real V of each head of a fused QKV (GPT-NeoX interleaves [q|k|v] per head)"
    paper_last_third = (
        "paper_last_third",
        "columns 2d..3d of the fused QKV output, as the paper's code took V: the d_head pieces 2H..3H-1 "
        "of [q0 k0 v0 q1 ...], e.g. [v2 q3 k3 v3] for 4 heads; true V only for 1 head "
        "(etl.sites.paper_slice_pieces)",
    )


class PositionRule(Choice):
    last = "last", "the last token of each probe sequence (the paper's rule)"
    all = "all", "every token of every probe sequence"
    sample = "sample", "n_sample (sequence, token) pairs drawn with the probe's seed"


class ProbeSource(Choice):
    embedded = "embedded", "held-out text of the embedded corpus (pydoc_data.topics)"
    file = "file", "a UTF-8 text file (probe.path)"
    hub = "hub", "the text column of a hub dataset (probe.dataset)"


class SuiteSource(Choice):
    local = "local", "model folders <suites>/<suite>/<model>/step<N>/ in the hub's on-disk format"
    hf = "hf", "hub repositories with one revision step<N> per checkpoint"


class RunKind(Choice):
    """What a run is (column ``runs.kind``)."""

    train = "train", "a training run tracked live (layerlake.track)"
    extract = "extract", "the checkpoints of one suite model, extracted after the fact"
    imported = "import", "metrics computed elsewhere and imported"


class RunStatus(Choice):
    """Where a run stands (column ``runs.status``)."""

    running = "running", "started, not finished"
    finished = "finished", "ended normally"
    failed = "failed", "ended with an error (see error)"
    killed = "killed", "its process died without ending it (found by the next start or by check)"


class Site(Choice):
    attn_out = (
        "attn_out",
        "attention block output written to the residual stream (W_O applied, bias included)",
    )
    mlp_out = "mlp_out", "MLP block output written to the residual stream (GPT-NeoX dense_4h_to_h)"
    resid_post = "resid_post", "residual stream after the block (the block's output hidden state)"
    ov = "ov", "V at the probe positions times W_O, no attention mixing; per layer and per head"


class Matrix(Choice):
    query_key_value = (
        "query_key_value",
        "the fused QKV projection: GPT-NeoX's rows interleaved per head, GPT-2's c_attn stacked [Q | K | V]",
    )
    query = "query", "the query projection (true per-head split of a fused QKV)"
    key = "key", "the key projection (true per-head split of a fused QKV)"
    value = "value", "the value projection (true per-head split of a fused QKV)"
    dense = "dense", "the attention output projection W_O"
    dense_h_to_4h = "dense_h_to_4h", "the MLP input projection (non-gated MLPs)"
    gate_proj = "gate_proj", "the gated MLP's gate projection (llama)"
    up_proj = "up_proj", "the gated MLP's up projection (llama)"
    dense_4h_to_h = "dense_4h_to_h", "the MLP output projection"
    ov = (
        "ov",
        "W_O_h W_V_h per head (head set), W_O W_V per layer (head NULL); its grad is the gradient of the "
        "loss with respect to the head's product, G_h = sum over positions of delta (A_h X)^T (per layer: "
        "sum_h G_h)",
    )
    ov_product_rule = (
        "ov_product_rule",
        "grad only: gO W_V + W_O gV (per head gO_h W_V_h + W_O_h gV_h), how W_O W_V moves along the "
        "gradients of its two factors (first order); not the gradient with respect to OV",
    )


class Tensor(Choice):
    weight = "weight", "the parameter itself"
    grad = (
        "grad",
        "the gradient of the language-model loss on the probe batch (ov: with respect to W_O_h W_V_h; "
        "ov_product_rule: gO W_V + W_O gV)",
    )


class QkvLayout(Choice):
    """How a layout's attention holds Q, K and V (``docs/families.md``)."""

    separate = "separate", "three maps q, k, v (LLaMA's q_proj, k_proj, v_proj)"
    interleaved = (
        "interleaved",
        "one fused map whose rows are, per key/value head g, the query heads of g, then k_g, then v_g "
        "(GPT-NeoX: [q_h | k_h | v_h] per head)",
    )
    stacked = "stacked", "one fused map whose rows are [Q | K | V], each its heads in order (GPT-2's c_attn)"


class Orientation(Choice):
    linear = "linear", "weights stored (out, in), as torch.nn.Linear"
    conv1d = "conv1d", "weights stored (in, out), as GPT-2's Conv1D: read transposed"


class AttentionProbs(Choice):
    """Where a layout's attention probabilities come from (for the ``ov`` gradient)."""

    sdpa = (
        "sdpa",
        "recomputed from the q, k and mask given to torch.nn.functional.scaled_dot_product_attention "
        "inside the attention module (or taken from its second output where it returns them, as "
        "Hugging Face's eager attention does)",
    )
    module = (
        "module",
        "the output of a module inside the block (probs_module), e.g. a dropout after the softmax",
    )
    none = "none", "none: the ov gradient is left out for this model (ov_product_rule is still stored)"


class ModelCall(Choice):
    """How a layout's model is called on token ids, and where its logits are."""

    hf = "hf", "model(input_ids=ids, use_cache=False).logits (Hugging Face); without gradients its base_model"
    tokens = "tokens", "model(ids) returns the logits (or a tuple whose first item they are)"
    tokens_targets = (
        "tokens_targets",
        "model(ids, targets) returns (logits, loss), full logits only with targets (nanoGPT)",
    )


class OutputFormat(Choice):
    table = "table", "a table on the terminal"
    csv = "csv", "comma-separated values (lists and structs as JSON text)"
    json = "json", "a JSON array of records"
    parquet = "parquet", "Apache Parquet"


class FigureFormat(Choice):
    png = "png", "a PNG image at plot.ppi pixels per inch (300 by default)"
    svg = "svg", "a scalable vector graphic"
    pdf = "pdf", "a PDF page (vector), for a paper"
    none = "none", "no figure"


# Choice types a SQL parameter may declare by name (``-- param: $estimator estimator = biased | ...``).
PARAM_CHOICES: dict[str, type[Choice]] = {
    "estimator": Estimator,
    "kernel": Kernel,
    "tensor": Tensor,
    "matrix": Matrix,
}

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a ``ConfigError`` otherwise."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ConfigError(
            f"executor.device {value!r} is not a device",
            fix="use executor.device=auto (the GPU Ray assigns, else the CPU), cpu, cuda or cuda:N",
        )
    return value
