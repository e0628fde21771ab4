"""The registry of site and matrix names that land in stored rows, and where each lives per architecture.

Names here are part of the data contract (``warehouse.schema``): they are written into the ``site``
and ``matrix`` columns, so they are spelled out once, documented, and never derived from Python
import paths. Each architecture family maps the canonical names onto its own modules (GPT-2's layout and
how to add a family: ``docs/families.md``):

==================  ===============================  ==========================================
canonical name      gpt_neox (Pythia)                llama
==================  ===============================  ==========================================
site attn_out       ``attention.dense`` output       ``self_attn.o_proj`` output
site mlp_out        ``mlp.dense_4h_to_h`` output     ``mlp.down_proj`` output
site resid_post     block output                     block output
site ov             V (split from the fused          V from ``self_attn.v_proj``, head h reading
                    ``query_key_value``) times W_O   its kv group h // (n_heads / n_kv_heads)
matrix query_key_value  ``attention.query_key_value``    (none: llama has no fused QKV)
matrix query/key/value  per-head split of the fused QKV  ``q_proj`` / ``k_proj`` / ``v_proj``
matrix dense        ``attention.dense`` (W_O)        ``self_attn.o_proj`` (W_O)
matrix dense_h_to_4h    ``mlp.dense_h_to_4h``        (none: the gated MLP has two input maps)
matrix gate_proj    (none)                           ``mlp.gate_proj`` (goes through the SiLU)
matrix up_proj      (none)                           ``mlp.up_proj`` (multiplies the gate)
matrix dense_4h_to_h    ``mlp.dense_4h_to_h``        ``mlp.down_proj``
matrix ov           W_O_h W_V_h per head, W_O W_V    the same, W_V_h of head h's kv group
                    per layer; grad: gO W_V + W_O gV  grad: the same chain rule
==================  ===============================  ==========================================

``gate_proj`` and ``up_proj`` keep llama's names because neither means what ``dense_h_to_4h``
means (the single map into the MLP's hidden layer); mapping one of them onto it would make a
cross-family query compare different things silently.

The OV activation (the paper's "OV circuit" activation) is V at the probe positions times W_O,
without attention mixing: per head ``ov_h = V_h @ W_O[:, h]^T`` (n x d_model) and per layer
``ov = concat_h(V_h) @ W_O^T = sum_h ov_h``. The output bias of W_O is not added (as the paper).

The ``ov`` *matrix* is the product ``W_O_h W_V_h`` (d_model x d_model, rank <= d_head) per head and
``W_O W_V`` per layer. OV is not a parameter, so its gradient (``tensor="grad"`` rows) is the chain
rule ``gO W_V + W_O gV`` (per head: ``gO_h W_V_h + W_O_h gV_h``), the derivative of the product along
the gradients of its two factors (:func:`ov_gradient_factors`): linear in the gradient, rank <= 2 d_head
per head. (The paper took ``gO gV``, the product of the two gradients, which is no derivative of OV
and scales with the square of the gradient.)

GPT-NeoX fuses Q, K and V *interleaved per head*: the fused output, viewed as
``(..., n_heads, 3 * d_head)``, holds ``[q_h | k_h | v_h]`` for each head h. ``v_slice="true_v"``
(the default) takes the true V; ``v_slice="paper_last_third"`` takes columns 2d..3d of the fused
output (d = n_heads * d_head) as the paper's code did, thinking it was V. With H heads those columns are
the d_head-wide pieces 2H..3H-1 of ``[q0 k0 v0 q1 k1 v1 ...]`` (:func:`paper_slice_pieces`): the true
V only for one head; q, k and v of the last third of the heads only when 3 divides H (12 heads: heads
8-11); otherwise the slice starts inside head floor(2H/3), e.g. ``[k1 | v1]`` for 2 heads,
``[v2 | q3 | k3 | v3]`` for 4, ``[k5 | v5 | q6 | k6 | v6 | q7 | k7 | v7]`` for 8 (of Pythia's head
counts, 8, 12, 16, 32 and 40, only 12 is divisible by 3). Its i-th d_head piece is read as "V of head i".
The slice applies to the ``ov`` site and the ``ov`` matrix (as in the paper); the ``value`` matrix is
always the true V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layerlake.core.choices import Matrix, Site, Tensor, VSlice
from layerlake.etl.errors import ExtractionError

# The canonical names and their meanings are the closed sets ``Site`` and ``Matrix`` of
# ``layerlake.core.choices`` (one list each); this module says where each lives per family.
SITES = {s.value: s for s in Site}
MATRICES = {m.value: m for m in Matrix}


QKV_SEPARATE = "separate"  # q_proj, k_proj, v_proj (llama and its variants)
QKV_INTERLEAVED = "interleaved"  # one fused map, rows [q_h | k_h | v_h] per head h (GPT-NeoX)
QKV_STACKED = "stacked"  # one fused map, rows [Q | K | V], each the heads in order (GPT-2's c_attn)


@dataclass(frozen=True)
class Family:
    """Where the canonical sites and matrices live inside one transformer block of a family."""

    name: str
    model_types: tuple[str, ...]  # the ``config.model_type`` values laid out this way
    blocks: str  # attribute of ``model.base_model`` holding the blocks, in order
    site_modules: dict[str, str]  # capture name -> module path inside a block ("" = the block)
    plain_matrices: dict[str, str]  # canonical matrix -> module path of a Linear (or Conv1D) in a block
    value_module: str  # module whose output holds V
    out_module: str  # module holding W_O
    qkv: str  # QKV_SEPARATE, QKV_INTERLEAVED or QKV_STACKED: how Q, K and V are laid out
    conv1d: bool = False  # weights stored (in, out) as GPT-2's Conv1D does: read transposed
    note: str = ""  # what a reader of this family's rows should know

    @property
    def fused_qkv(self) -> bool:
        return self.qkv != QKV_SEPARATE


FAMILIES: dict[str, Family] = {
    "gpt_neox": Family(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="layers",
        site_modules={
            "attn_out": "attention.dense",
            "mlp_out": "mlp.dense_4h_to_h",
            "resid_post": "",
            "value": "attention.query_key_value",
        },
        plain_matrices={
            "query_key_value": "attention.query_key_value",
            "dense": "attention.dense",
            "dense_h_to_4h": "mlp.dense_h_to_4h",
            "dense_4h_to_h": "mlp.dense_4h_to_h",
        },
        value_module="attention.query_key_value",
        out_module="attention.dense",
        qkv=QKV_INTERLEAVED,
        note="Pythia and PolyPythias",
    ),
    "llama": Family(
        name="llama",
        # the same module names and the same roles in each: grouped-query attention where
        # num_key_value_heads < num_attention_heads; Qwen2's q/k/v biases are in the V output; OLMo 2's
        # QK-norm acts on Q and K only, so V, W_O and the sites are llama's
        model_types=("llama", "mistral", "qwen2", "olmo", "olmo2"),
        blocks="layers",
        site_modules={
            "attn_out": "self_attn.o_proj",
            "mlp_out": "mlp.down_proj",
            "resid_post": "",
            "value": "self_attn.v_proj",
        },
        plain_matrices={
            "query": "self_attn.q_proj",
            "key": "self_attn.k_proj",
            "value": "self_attn.v_proj",
            "dense": "self_attn.o_proj",
            "gate_proj": "mlp.gate_proj",
            "up_proj": "mlp.up_proj",
            "dense_4h_to_h": "mlp.down_proj",
        },
        value_module="self_attn.v_proj",
        out_module="self_attn.o_proj",
        qkv=QKV_SEPARATE,
        note="LLaMA, Mistral, Qwen2, OLMo, OLMo 2, pico-lm",
    ),
    "gpt2": Family(
        name="gpt2",
        model_types=("gpt2",),
        blocks="h",
        site_modules={
            "attn_out": "attn.c_proj",
            "mlp_out": "mlp.c_proj",
            "resid_post": "",
            "value": "attn.c_attn",
        },
        plain_matrices={
            "query_key_value": "attn.c_attn",
            "dense": "attn.c_proj",
            "dense_h_to_4h": "mlp.c_fc",
            "dense_4h_to_h": "mlp.c_proj",
        },
        value_module="attn.c_attn",
        out_module="attn.c_proj",
        qkv=QKV_STACKED,
        conv1d=True,
        note="GPT-2 and Stanford CRFM's GPT-2 runs; Conv1D weights (in, out) are read transposed",
    ),
}
# config.model_type -> its family
MODEL_TYPES: dict[str, Family] = {t: f for f in FAMILIES.values() for t in f.model_types}
REGISTRY_DOC = "docs/families.md"


@dataclass(frozen=True)
class Shape:
    """The attention geometry of a model, read from its config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int

    @property
    def group(self) -> int:
        """Query heads per kv head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def family_of(model: nn.Module) -> Family:
    """The family of a loaded model, from ``config.model_type``."""
    return family_of_type(getattr(getattr(model, "config", None), "model_type", None))


def family_of_type(model_type: str | None, where: str = "") -> Family:
    """The family laying out ``model_type`` (a config's ``model_type``); an unknown one is an error
    naming the known families and the registry."""
    if model_type not in MODEL_TYPES:
        known = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES.values())
        raise ExtractionError(
            f"{where}model type {model_type!r} has no site layout; layerlake knows: {known}",
            fix=f"extract a model of a known family, or add its layout to etl.sites.FAMILIES ({REGISTRY_DOC})",
        )
    return MODEL_TYPES[model_type]


def shape_of(model: nn.Module) -> Shape:
    """Layers, widths and heads of a loaded model."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return Shape(cfg.num_hidden_layers, cfg.hidden_size, n_heads, n_kv, d_head)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, in order (``base_model.layers``; GPT-2: ``base_model.h``)."""
    return list(getattr(model.base_model, family_of(model).blocks))


def module_at(block: nn.Module, path: str) -> nn.Module:
    """The submodule of ``block`` at a dotted ``path`` (``""`` is the block itself)."""
    return block.get_submodule(path) if path else block


def check_family_options(v_slice: VSlice, family: Family) -> None:
    """Fail early, naming the option, when an option cannot apply to this family."""
    if v_slice == VSlice.paper_last_third and family.qkv == QKV_SEPARATE:
        raise ExtractionError(
            f"v_slice=paper_last_third needs a fused QKV; {family.name} has separate V",
            fix="set extract.v_slice=true_v for this model",
        )


# --- V and W_V per head -------------------------------------------------------------------------


def paper_slice_pieces(n_heads: int) -> list[str]:
    """The pieces of a fused GPT-NeoX QKV output that ``v_slice="paper_last_third"`` takes, in order.

    The fused output of H heads is 3H pieces of d_head columns, ``[q0 k0 v0 q1 k1 v1 ...]``: piece u is
    part ``"qkv"[u % 3]`` of head ``u // 3``. The paper's slice, columns 2d..3d with d = H * d_head, is
    pieces 2H .. 3H-1, and its i-th piece is what the ``ov`` site then reads as head i's V. It starts at
    piece 2H, inside head floor(2H / 3): at its q when 3 divides H (the slice is then q, k and v of the
    last third of the heads), at its v when H = 3m + 1, at its k when H = 3m + 2.

    >>> paper_slice_pieces(1)
    ['v0']
    >>> paper_slice_pieces(2)
    ['k1', 'v1']
    >>> paper_slice_pieces(3)
    ['q2', 'k2', 'v2']
    >>> paper_slice_pieces(4)
    ['v2', 'q3', 'k3', 'v3']
    >>> paper_slice_pieces(8)
    ['k5', 'v5', 'q6', 'k6', 'v6', 'q7', 'k7', 'v7']
    """
    return [f"{'qkv'[u % 3]}{u // 3}" for u in range(2 * n_heads, 3 * n_heads)]


def split_value_output(out: torch.Tensor, family: Family, shape: Shape, v_slice: str) -> torch.Tensor:
    """V per query head from the value module's output: (n, features) -> (n, n_heads, d_head).

    Fused QKV (``[head][q|k|v][d_head]``): ``true_v`` is ``out.view(n, H, 3, dh)[:, :, 2]``;
    ``paper_last_third`` is ``out[:, 2d:].view(n, H, dh)``, whose "head" i is the fused piece
    ``paper_slice_pieces(H)[i]`` (not V_i unless H = 1). Llama: ``v_proj`` output viewed as
    ``(n, n_kv, dh)``, each kv head repeated for the ``n_heads / n_kv`` query heads of its group.
    """
    n = out.shape[0]
    h, dh = shape.n_heads, shape.d_head
    if family.qkv == QKV_STACKED:  # [Q | K | V]: the paper's last third is the true V here
        return out[:, 2 * h * dh :].reshape(n, h, dh)
    if family.qkv == QKV_INTERLEAVED:
        if v_slice == VSlice.paper_last_third:
            return out[:, 2 * h * dh :].reshape(n, h, dh)
        return out.reshape(n, h, 3, dh)[:, :, 2, :]
    v = out.reshape(n, shape.n_kv_heads, dh)
    return v.repeat_interleave(shape.group, dim=1)


def split_value_weight(w: torch.Tensor, family: Family, shape: Shape, v_slice: str) -> torch.Tensor:
    """W_V per query head from the value module's weight: (features, d_model) -> (n_heads, d_head, d_model).

    Rows follow the same layout as :func:`split_value_output` (a Linear's output features are its rows).
    """
    h, dh = shape.n_heads, shape.d_head
    if family.qkv == QKV_STACKED:
        return w[2 * h * dh :].reshape(h, dh, -1)
    if family.qkv == QKV_INTERLEAVED:
        if v_slice == VSlice.paper_last_third:
            return w[2 * h * dh :].reshape(h, dh, -1)
        return w.reshape(h, 3, dh, -1)[:, 2]
    return w.reshape(shape.n_kv_heads, dh, -1).repeat_interleave(shape.group, dim=0)


def split_fused_qkv(w: torch.Tensor, family: Family, shape: Shape) -> dict[str, torch.Tensor]:
    """The true Q, K, V parts of a fused QKV weight (rows = output features), each (n_heads * d_head,
    d_model): per head ``[q_h | k_h | v_h]`` interleaved (GPT-NeoX) or ``[Q | K | V]`` stacked (GPT-2)."""
    if family.qkv == QKV_STACKED:
        parts = w.reshape(3, shape.n_heads * shape.d_head, -1)
        return {name: parts[i] for i, name in enumerate(("query", "key", "value"))}
    parts = w.reshape(shape.n_heads, 3, shape.d_head, -1)
    return {
        name: parts[:, i].reshape(shape.n_heads * shape.d_head, -1)
        for i, name in enumerate(("query", "key", "value"))
    }


def ov_activations(v: torch.Tensor, w_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OV activations from V per head (n, H, dh) and W_O (d_model, H*dh).

    Per head ``ov_h = V_h @ W_O[:, h*dh:(h+1)*dh]^T`` -> (H, n, d_model); per layer
    ``concat_h(V_h) @ W_O^T`` (n, d_model), which equals ``sum_h ov_h``.
    """
    n, h, dh = v.shape
    w_o_heads = w_o.reshape(w_o.shape[0], h, dh)  # (d_model, H, dh)
    per_head = torch.einsum("nhk,dhk->hnd", v, w_o_heads)
    return v.reshape(n, h * dh) @ w_o.T, per_head


# --- the matrices of one block ------------------------------------------------------------------

MatrixKey = tuple[str, "int | None"]  # (canonical matrix, head or None)
Factors = tuple[torch.Tensor, "torch.Tensor | None"]  # (a, b): the matrix is a @ b (b None: a itself)


def read_tensor(linear: nn.Module, tensor: str, family: Family | None = None) -> torch.Tensor | None:
    """A Linear's weight (``tensor="weight"``) or its weight's gradient (``"grad"``, None if there is
    none), as (out_features, in_features): a Conv1D's (in, out) weight is transposed."""
    t = linear.weight.detach() if tensor == Tensor.weight else linear.weight.grad
    return None if t is None else (t.T if family is not None and family.conv1d else t)


def ov_operands(
    value: nn.Module, dense: nn.Module, family: Family, shape: Shape, v_slice: str, tensor: str
) -> dict[MatrixKey, tuple[torch.Tensor, torch.Tensor]]:
    """``(W_O, W_V)`` of the whole layer (key ``("ov", None)``) and of each head h (``("ov", h)``),
    read as ``tensor`` (weights or their gradients); empty when either is missing.

    Per layer W_O is (d_model x H*d_head) and W_V (H*d_head x d_model), its rows per head as
    :func:`split_value_weight` takes them (``v_slice``); per head ``W_O[:, h*dh:(h+1)*dh]`` and W_V_h.
    """
    w_v_raw, w_o = read_tensor(value, tensor, family), read_tensor(dense, tensor, family)
    if w_v_raw is None or w_o is None:
        return {}
    w_v = split_value_weight(w_v_raw, family, shape, v_slice)  # (H, dh, d_model)
    w_o_heads = w_o.reshape(w_o.shape[0], shape.n_heads, shape.d_head)
    pairs = {("ov", None): (w_o, w_v.reshape(shape.n_heads * shape.d_head, -1))}
    for h in range(shape.n_heads):
        pairs[("ov", h)] = (w_o_heads[:, h, :], w_v[h])
    return pairs


def ov_gradient_factors(
    w_o: torch.Tensor, w_v: torch.Tensor, g_o: torch.Tensor, g_v: torch.Tensor
) -> Factors:
    """The gradient of OV = W_O W_V by the chain rule, ``gO @ W_V + W_O @ gV``, as factors of inner size 2r.

    OV is not a parameter: what the loss gradient does to it is the derivative of the product along
    the gradients gO = dL/dW_O (d_model x r) and gV = dL/dW_V (r x d_model) (the product rule):

        d/dt (W_O + t gO)(W_V + t gV) |_{t=0} = gO W_V + W_O gV = [gO | W_O] @ [W_V ; gV]

    so a gradient step of size lr moves OV by -lr times this matrix, to first order. It is linear in
    the gradient, unlike the paper's ``gO @ gV`` (quadratic, and not a derivative of OV). The two
    factors are (d_model x 2r) and (2r x d_model), so ``metrics.product_svdvals`` keeps its cheap SVD
    while 2r < d_model (an OV head: rank <= 2 d_head).

    With W_O = e1, W_V = 2 e2^T, gO = e3, gV = e1^T in 3 dimensions the matrix is 2 e3 e2^T + e1 e1^T,
    with singular values 2, 1 and 0:

    >>> e = torch.eye(3)
    >>> a, b = ov_gradient_factors(e[:, :1], 2 * e[1:2], e[:, 2:], e[:1])
    >>> (a @ b).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    """
    return torch.cat([g_o, w_o], dim=1), torch.cat([w_v, g_v], dim=0)


def block_matrices(
    block: nn.Module, family: Family, shape: Shape, v_slice: str, tensor: str
) -> dict[MatrixKey, Factors]:
    """Every canonical matrix of one block, as ``(key) -> (a, b)`` with the matrix equal to ``a @ b``
    (``b`` None for a plain matrix), so low-rank products keep their factors for a cheap SVD.

    ``tensor="weight"`` reads each Linear's weight, ``tensor="grad"`` its weight's gradient (matrices
    without one are left out). The ``ov`` matrix is ``W_O_h @ W_V_h`` per head and ``W_O @ W_V`` per
    layer; its gradient is the chain rule ``gO_h @ W_V_h + W_O_h @ gV_h`` per head and
    ``gO @ W_V + W_O @ gV`` per layer (:func:`ov_gradient_factors`), with the weights at which the
    gradient was taken. W_V and gV both follow ``v_slice``.
    """
    out: dict[MatrixKey, Factors] = {}
    for name, path in family.plain_matrices.items():
        t = read_tensor(module_at(block, path), tensor, family)
        if t is not None:
            out[(name, None)] = (t, None)
    if family.fused_qkv and ("query_key_value", None) in out:
        for name, part in split_fused_qkv(out[("query_key_value", None)][0], family, shape).items():
            out[(name, None)] = (part, None)
    value, dense = module_at(block, family.value_module), module_at(block, family.out_module)
    weights = ov_operands(value, dense, family, shape, v_slice, Tensor.weight)
    if tensor == Tensor.weight:
        out.update(weights)  # (W_O, W_V): the product itself
    else:
        grads = ov_operands(value, dense, family, shape, v_slice, Tensor.grad)
        out.update({key: ov_gradient_factors(*weights[key], *g) for key, g in grads.items()})
    return out
