"""The canonical site and matrix names that land in stored rows, and how V, W_V and OV are cut per head.

Names here are part of the data contract (``warehouse.schema``): they are written into the ``site``
and ``matrix`` columns, so they are spelled out once (``layerlake.core.choices.Site`` and ``Matrix``),
documented, and never derived from Python import paths. Where each lives in a model is a declared
layout (``layerlake.core.layouts``, fitted by ``layerlake.etl.layouts``; presets and how to write one:
``docs/families.md``):

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
                    per layer; grad: G_h (below)
matrix ov_product_rule  grad only: gO W_V + W_O gV   the same
==================  ===============================  ==========================================

``gate_proj`` and ``up_proj`` keep llama's names because neither means what ``dense_h_to_4h``
means (the single map into the MLP's hidden layer); mapping one of them onto it would make a
cross-family query compare different things silently.

The OV activation (the paper's "OV circuit" activation) is V at the probe positions times W_O,
without attention mixing: per head ``ov_h = V_h @ W_O[:, h]^T`` (n x d_model) and per layer
``ov = concat_h(V_h) @ W_O^T = sum_h ov_h``. The output bias of W_O is not added (as the paper).

The ``ov`` *matrix* is the product ``M_h = W_O_h W_V_h`` (d_model x d_model, rank <= d_head) per head and
``W_O W_V = sum_h M_h`` per layer. Its gradient (``tensor="grad"`` rows) is the gradient of the loss with
respect to M_h, as if M_h were a parameter: ``G_h = sum_i delta_i (A_h X)_i^T`` over the probe's
positions i, with delta_i the gradient at the attention output (W_O's output, d_model) and
``(A_h X)_i = sum_j A_h[i, j] x_j`` head h's attention-weighted value *input* (x_j: the input of the
value map). It is computed from hooks during the gradient pass (``etl.ov_gradient``); per layer the row
holds ``sum_h G_h``, how the layer's W_O W_V moves when every head's product takes a gradient step. Then
``dL/dW_O_h = G_h W_V_h^T + (sum_i delta_i) b_V_h^T``: the value bias reaches W_O's gradient through its
own path, which is no part of M_h. A model whose layout gives no attention probabilities
(``probs: none``) stores no ``ov`` gradient. ``ov_product_rule`` (grad only) is the former definition:
``gO W_V + W_O gV`` (per head ``gO_h W_V_h + W_O_h gV_h``), the derivative of the product along the
gradients of its two factors (:func:`ov_product_rule_factors`), what one gradient step on W_O and W_V
does to W_O W_V to first order; rank <= 2 d_head per head.

GPT-NeoX fuses Q, K and V *interleaved per head*: the fused output, viewed as
``(..., n_heads, 3 * d_head)``, holds ``[q_h | k_h | v_h]`` for each head h (with grouped-query
attention, per key/value head g: the query heads of g, then k_g, then v_g). ``v_slice="true_v"``
(the default) takes the true V; ``v_slice="paper_last_third"`` takes columns 2d..3d of the fused
output (d = n_heads * d_head) as the paper's code did, thinking it was V. With H heads those columns are
the d_head-wide pieces 2H..3H-1 of ``[q0 k0 v0 q1 k1 v1 ...]`` (:func:`paper_slice_pieces`): the true
V only for one head; q, k and v of the last third of the heads only when 3 divides H (12 heads: heads
8-11); otherwise the slice starts inside head floor(2H/3), e.g. ``[k1 | v1]`` for 2 heads,
``[v2 | q3 | k3 | v3]`` for 4, ``[k5 | v5 | q6 | k6 | v6 | q7 | k7 | v7]`` for 8 (of Pythia's head
counts, 8, 12, 16, 32 and 40, only 12 is divisible by 3). Its i-th d_head piece is read as "V of head i".
The slice applies to the ``ov`` site, the ``ov`` weight matrix and ``ov_product_rule`` (as in the
paper); the ``value`` matrix and the ``ov`` gradient G_h are always those of the true V.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from layerlake.core.choices import Matrix, QkvLayout, Site, Tensor, VSlice
from layerlake.etl.errors import ExtractionError
from layerlake.etl.layouts import BlockFit, Shape

if TYPE_CHECKING:
    from layerlake.core.layouts import Layout


# The canonical names and their meanings are the closed sets ``Site`` and ``Matrix`` of
# ``layerlake.core.choices`` (one list each); layouts say where each lives.
SITES = {s.value: s for s in Site}
MATRICES = {m.value: m for m in Matrix}


def check_layout_options(v_slice: VSlice, layout: Layout, shape: Shape) -> None:
    """Fail early, naming the option, when an option cannot apply to this layout."""
    if v_slice == VSlice.paper_last_third and not layout.fused_qkv:
        raise ExtractionError(
            f"v_slice=paper_last_third needs a fused QKV; {layout.name} has separate V",
            fix="set extract.v_slice=true_v for this model",
        )
    if v_slice == VSlice.paper_last_third and shape.n_kv_heads != shape.n_heads:
        raise ExtractionError(
            f"v_slice=paper_last_third takes the paper's columns of a fused QKV without grouped-query "
            f"attention; {layout.name} has {shape.n_heads} heads on {shape.n_kv_heads} key/value heads",
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


def qkv_rows(qkv: QkvLayout, shape: Shape) -> dict[str, torch.Tensor]:
    """Row indices of Q (per query head), K and V (per key/value head) in the weight (or the output
    features) of a fused QKV map, each ``(heads, d_head)``.

    ``stacked``: ``[Q | K | V]``, Q holding H heads, K and V each H_kv. ``interleaved``: per key/value
    head g, its r = H / H_kv query heads, then k_g, then v_g (GPT-NeoX, r = 1: ``[q_h | k_h | v_h]``).

    >>> {k: v.flatten().tolist() for k, v in qkv_rows(QkvLayout.interleaved, Shape(1, 4, 2, 2, 1)).items()}
    {'query': [0, 3], 'key': [1, 4], 'value': [2, 5]}
    >>> {k: v.flatten().tolist() for k, v in qkv_rows(QkvLayout.stacked, Shape(1, 4, 4, 2, 1)).items()}
    {'query': [0, 1, 2, 3], 'key': [4, 5], 'value': [6, 7]}
    """
    h, kv, dh, r = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.group
    j = torch.arange(dh)
    heads, groups = torch.arange(h)[:, None], torch.arange(kv)[:, None]
    if qkv == QkvLayout.stacked:
        return {"query": heads * dh + j, "key": (h + groups) * dh + j, "value": (h + kv + groups) * dh + j}
    start = (heads // r) * (r + 2) * dh + (heads % r) * dh
    base = groups * (r + 2) * dh
    return {"query": start + j, "key": base + r * dh + j, "value": base + (r + 1) * dh + j}


def value_rows(layout: Layout, shape: Shape, v_slice: str) -> torch.Tensor:
    """``(n_heads, d_head)``: the rows of the weight holding V (its output features) that each query head
    reads as its V. Separate maps: head h reads key/value head h // (n_heads / n_kv_heads); a fused QKV:
    its V rows (``true_v``) or the paper's columns 2d..3d (``paper_last_third``, see :func:`paper_slice_pieces`)."""
    h, dh = shape.n_heads, shape.d_head
    j, heads = torch.arange(dh), torch.arange(h)[:, None]
    if layout.qkv == QkvLayout.separate:
        return (heads // shape.group) * dh + j
    if v_slice == VSlice.paper_last_third:
        return 2 * h * dh + heads * dh + j
    return qkv_rows(layout.qkv, shape)["value"][heads[:, 0] // shape.group]


def split_value_output(out: torch.Tensor, layout: Layout, shape: Shape, v_slice: str) -> torch.Tensor:
    """V per query head from the value map's output: (n, features) -> (n, n_heads, d_head).

    Fused QKV interleaved (``[head][q|k|v][d_head]``): ``true_v`` is ``out.view(n, H, 3, dh)[:, :, 2]``;
    ``paper_last_third`` is ``out[:, 2d:].view(n, H, dh)``, whose "head" i is the fused piece
    ``paper_slice_pieces(H)[i]`` (not V_i unless H = 1). Stacked ``[Q | K | V]``: the last third. Separate
    maps: ``v_proj``'s output viewed as ``(n, n_kv, dh)``, each kv head repeated for the query heads of its
    group (:func:`value_rows`).
    """
    return out[:, value_rows(layout, shape, v_slice)]


def split_value_weight(w: torch.Tensor, layout: Layout, shape: Shape, v_slice: str) -> torch.Tensor:
    """W_V per query head from the value map's weight: (features, d_model) -> (n_heads, d_head, d_model).

    Rows follow the same layout as :func:`split_value_output` (a Linear's output features are its rows).
    """
    return w[value_rows(layout, shape, v_slice)]


def split_fused_qkv(w: torch.Tensor, layout: Layout, shape: Shape) -> dict[str, torch.Tensor]:
    """The true Q, K, V parts of a fused QKV weight (rows = output features): Q (n_heads * d_head, d_model),
    K and V (n_kv_heads * d_head, d_model), each its heads in order (:func:`qkv_rows`)."""
    return {name: w[rows.flatten()] for name, rows in qkv_rows(layout.qkv, shape).items()}


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


def ov_operands(
    block: BlockFit, layout: Layout, shape: Shape, v_slice: str, tensor: str
) -> dict[MatrixKey, tuple[torch.Tensor, torch.Tensor]]:
    """``(W_O, W_V)`` of the whole layer (key ``("ov", None)``) and of each head h (``("ov", h)``),
    read as ``tensor`` (weights or their gradients); empty when either is missing.

    Per layer W_O is (d_model x H*d_head) and W_V (H*d_head x d_model), its rows per head as
    :func:`split_value_weight` takes them (``v_slice``); per head ``W_O[:, h*dh:(h+1)*dh]`` and W_V_h.
    """
    w_v_raw, w_o = block.read(block.value_matrix, tensor), block.read("dense", tensor)
    if w_v_raw is None or w_o is None:
        return {}
    w_v = split_value_weight(w_v_raw, layout, shape, v_slice)  # (H, dh, d_model)
    w_o_heads = w_o.reshape(w_o.shape[0], shape.n_heads, shape.d_head)
    pairs = {("ov", None): (w_o, w_v.reshape(shape.n_heads * shape.d_head, -1))}
    for h in range(shape.n_heads):
        pairs[("ov", h)] = (w_o_heads[:, h, :], w_v[h])
    return pairs


def ov_product_rule_factors(
    w_o: torch.Tensor, w_v: torch.Tensor, g_o: torch.Tensor, g_v: torch.Tensor
) -> Factors:
    """The product rule's ``gO @ W_V + W_O @ gV`` (the ``ov_product_rule`` matrix), as factors of inner size 2r.

    What the gradients gO = dL/dW_O (d_model x r) and gV = dL/dW_V (r x d_model) of the two factors do to
    their product OV = W_O W_V, to first order:

        d/dt (W_O + t gO)(W_V + t gV) |_{t=0} = gO W_V + W_O gV = [gO | W_O] @ [W_V ; gV]

    so a gradient step of size lr moves OV by -lr times this matrix (plus a term in lr^2). It is not the
    gradient of the loss with respect to OV (the ``ov`` gradient, ``etl.ov_gradient``). The two factors
    are (d_model x 2r) and (2r x d_model), so ``metrics.product_svdvals`` keeps its cheap SVD while
    2r < d_model (an OV head: rank <= 2 d_head).

    With W_O = e1, W_V = 2 e2^T, gO = e3, gV = e1^T in 3 dimensions the matrix is 2 e3 e2^T + e1 e1^T,
    with singular values 2, 1 and 0:

    >>> e = torch.eye(3)
    >>> a, b = ov_product_rule_factors(e[:, :1], 2 * e[1:2], e[:, 2:], e[:1])
    >>> (a @ b).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    """
    return torch.cat([g_o, w_o], dim=1), torch.cat([w_v, g_v], dim=0)


def block_matrices(
    block: BlockFit, layout: Layout, shape: Shape, v_slice: str, tensor: str
) -> dict[MatrixKey, Factors]:
    """Every canonical matrix of one block, as ``(key) -> (a, b)`` with the matrix equal to ``a @ b``
    (``b`` None for a plain matrix), so low-rank products keep their factors for a cheap SVD.

    ``tensor="weight"`` reads each weight, ``tensor="grad"`` its gradient (matrices without one are left
    out). The ``ov`` weight is ``W_O_h @ W_V_h`` per head and ``W_O @ W_V`` per layer. With gradients the
    product rule ``gO_h @ W_V_h + W_O_h @ gV_h`` per head and ``gO @ W_V + W_O @ gV`` per layer is
    ``ov_product_rule`` (:func:`ov_product_rule_factors`), with the weights at which the gradient was taken;
    the ``ov`` gradient needs the pass's hooks and is not made here (``etl.ov_gradient``). W_V and gV both
    follow ``v_slice``.
    """
    out: dict[MatrixKey, Factors] = {}
    for name in block.weights:
        t = block.read(name, tensor)
        if t is not None:
            out[(name, None)] = (t, None)
    if layout.fused_qkv and ("query_key_value", None) in out:
        for name, part in split_fused_qkv(out[("query_key_value", None)][0], layout, shape).items():
            out[(name, None)] = (part, None)
    weights = ov_operands(block, layout, shape, v_slice, Tensor.weight)
    if tensor == Tensor.weight:
        out.update(weights)  # (W_O, W_V): the product itself
    else:
        grads = ov_operands(block, layout, shape, v_slice, Tensor.grad)
        out.update(
            {
                ("ov_product_rule", h): ov_product_rule_factors(*weights[("ov", h)], *g)
                for (_, h), g in grads.items()
            }
        )
    return out
