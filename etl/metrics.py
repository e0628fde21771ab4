"""The numbers computed from one activation matrix or weight matrix: pure ``Tensor -> numbers`` functions.

Everything is computed in float64 on the tensor's device. ``x`` is an activation matrix of ``n``
probe rows by ``d`` features. Names of kernels and estimators are stored in rows (``sketches``).

CKA between two sketches ``G1``, ``G2`` of the same probe, kernel and estimator is
``<G1, G2> / (|G1| |G2|)`` (Frobenius): with ``biased`` (``H K H``) sketches of the linear kernel this
is Kornblith et al.'s linear CKA, with ``debiased`` (U-centred) sketches the debiased CKA.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from layerlake.core.choices import Estimator, Kernel, SpectraMethod

KERNELS = Kernel.values()
ESTIMATORS = Estimator.values()


def as64(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float64 on its own device."""
    return x.detach().to(torch.float64)


# --- activation summaries -------------------------------------------------------------------------


def mean_row_norm(x: torch.Tensor) -> float:
    """Mean L2 norm of the rows: ``(1/n) sum_i ||x_i||_2``.

    >>> mean_row_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    2.5
    """
    return torch.linalg.vector_norm(as64(x), dim=1).mean().item()


def rms(x: torch.Tensor) -> float:
    """Root mean square of all entries: ``sqrt((1/(n d)) sum_ij x_ij^2)``.

    >>> rms(torch.full((2, 3), -2.0))
    2.0
    """
    return as64(x).square().mean().sqrt().item()


def std(x: torch.Tensor) -> float:
    """Population standard deviation of all entries: ``sqrt(mean((x - mean(x))^2))`` (ddof 0).

    >>> std(torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    1.0
    """
    x = as64(x)
    return (x - x.mean()).square().mean().sqrt().item()


def max_abs(x: torch.Tensor) -> float:
    """Largest absolute entry: ``max_ij |x_ij|``.

    >>> max_abs(torch.tensor([[1.0, -5.0], [2.0, 0.5]]))
    5.0
    """
    return as64(x).abs().max().item()


def excess_kurtosis(x: torch.Tensor) -> float | None:
    """Excess kurtosis of all entries: ``m4 / m2^2 - 3`` with central moments ``m_k = mean((x - mean x)^k)``.

    0 for a Gaussian, -2 for a symmetric two-point distribution; None (stored as NULL) for a constant
    matrix, where it is undefined (m2 = 0), rather than a made-up number or a NaN that audits flag.

    >>> excess_kurtosis(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    -2.0
    >>> excess_kurtosis(torch.zeros(2, 2)) is None
    True
    """
    x = as64(x)
    c = x - x.mean()
    m2 = c.square().mean().item()
    if m2 == 0.0:
        return None
    return c.pow(4).mean().item() / (m2 * m2) - 3.0


def frac_near_zero(x: torch.Tensor, eps: float) -> float:
    """Share of entries with ``|x_ij| <= eps * rms(x)`` (all of them for an all-zero matrix).

    >>> frac_near_zero(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 1e-3)
    0.25
    """
    x = as64(x)
    threshold = eps * x.square().mean().sqrt()
    return (x.abs() <= threshold).double().mean().item()


def svdvals64(m: torch.Tensor) -> torch.Tensor:
    """Singular values of ``m`` in float64, descending (``torch.linalg.svdvals``).

    >>> svdvals64(torch.diag(torch.tensor([1.0, 3.0, 2.0]))).tolist()
    [3.0, 2.0, 1.0]
    """
    m = as64(m)
    # LAPACK's SVD of a wide matrix costs about 3x that of its (equal-valued) transpose: 0.52 s against
    # 0.15 s for a 768 x 3072 float64 matrix on 2 CPU cores, so the tall side is always the one taken.
    return torch.linalg.svdvals(m.mT if m.shape[-2] < m.shape[-1] else m)


def centred_svdvals(x: torch.Tensor) -> torch.Tensor:
    """Singular values of the column-centred matrix ``x - 1 mean_cols(x)``, float64, descending.

    A rank-one ``x = u v^T`` with mean-zero ``u`` keeps its one singular value ``|u| |v|``:

    >>> [round(s, 12) for s in centred_svdvals(torch.tensor([[3.0, 4.0], [-3.0, -4.0]])).tolist()]
    [7.071067811865, 0.0]
    """
    x = as64(x)
    return svdvals64(x - x.mean(dim=0, keepdim=True))


def product_svdvals(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of ``a @ b`` (or of ``a``), float64, descending, ``min(rows, cols)`` of them.

    When the inner dimension r is smaller than both outer ones (an OV head: d x dh times dh x d),
    the product has rank <= r: with ``a = Qa Ra`` and ``b^T = Qb Rb`` (reduced QR),
    ``a b = Qa (Ra Rb^T) Qb^T`` has the singular values of the r x r ``Ra Rb^T``, and the rest are
    exactly 0. That costs O(d r^2) instead of the O(d^3) SVD of the d x d product.

    >>> a = torch.tensor([[1.0], [0.0], [0.0]]); b = torch.tensor([[0.0, 2.0, 0.0]])
    >>> product_svdvals(a, b).tolist()
    [2.0, 0.0, 0.0]
    """
    if b is None:
        return svdvals64(a)
    a, b = as64(a), as64(b)
    rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
    if inner >= min(rows, cols):
        return svdvals64(a @ b)
    _, ra = torch.linalg.qr(a)
    _, rb = torch.linalg.qr(b.T)
    small = svdvals64(ra @ rb.T)
    return torch.cat([small, small.new_zeros(min(rows, cols) - inner)])


def batched_svdvals(
    matrices: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    dtype: torch.dtype = torch.float64,
    max_batch_bytes: int = 256 * 2**20,
    method: SpectraMethod = SpectraMethod.svd,
) -> list[torch.Tensor]:
    """The singular values of each ``a @ b`` (or ``a``), as :func:`product_svdvals` gives them, for many
    matrices at once: float64 results, descending, ``min(rows, cols)`` each.

    Each matrix is first reduced to the core whose singular values it shares (itself on its tall side;
    for a low-rank product the ``r x r`` ``Ra Rb^T``, see :func:`product_svdvals`), in ``dtype``, and its
    values come from :func:`singular_values` (``method``). On a GPU, cores of the same shape go through
    one batched call, at most ``max_batch_bytes`` of them at a time (one call for the 24 MLP matrices of
    a model instead of 24 kernel launches). On the CPU each core gets its own call: LAPACK runs a batch
    one matrix after another anyway, and stacking the copies made six 3072 x 768 float64 SVDs 20% slower
    (1.09 s against 0.91 s, 2 cores). ``dtype=torch.float32`` computes in float32 (``svdvals``; its
    error against float64 is measured by ``benchmarks/scale.py``).

    >>> a = torch.tensor([[1.0], [0.0], [0.0]]); b = torch.tensor([[0.0, 2.0, 0.0]])
    >>> [v.tolist() for v in batched_svdvals([(a, b), (torch.diag(torch.tensor([1.0, 3.0])), None)])]
    [[2.0, 0.0, 0.0], [3.0, 1.0]]
    """
    groups: dict[tuple, list[int]] = {}
    for i, (a, b) in enumerate(matrices):
        key = (i,) if a.device.type == "cpu" else (_core_shape(a, b), a.device)
        groups.setdefault(key, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(matrices)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    for members in groups.values():
        per_matrix = max(1, math.prod(_core_shape(*matrices[members[0]])) * itemsize)
        size = max(1, max_batch_bytes // per_matrix)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            # cores made just before their SVD: a whole model's float64 copies made at once cost memory
            # and, on the CPU, 10% more time (at Pythia-160m's shape)
            cores = [_svd_core(*matrices[i], dtype) for i in chunk]
            stacked = (
                cores[0][0][None] if len(cores) == 1 else torch.stack([c for c, _ in cores])
            )  # no copy of one
            values = singular_values(stacked, method).to(torch.float64)
            for i, (_, zeros), sv in zip(chunk, cores, values, strict=True):
                out[i] = torch.cat([sv, sv.new_zeros(zeros)]) if zeros else sv
    return out  # type: ignore[return-value]


# The smallest lambda_min / lambda_max at which a Gram's eigenvalues are used as the squared singular
# values (a condition number of at most 100). Forming and solving the Gram moves each eigenvalue by about
# c eps lambda_max (eps = 2^-52; measured c <= 3.5 for the small ones of spectra spread to this floor,
# m up to 4096 x 1024), so s_i = sqrt(lambda_i) is off by c eps / 2 (s_1 / s_i)^2 relative: at most
# 1.1e-12 c here. Below the floor that error grows as the square of the spread (6e-10 at a condition
# number of 1e4, all relative accuracy gone near sqrt(eps) s_1 = 1.5e-8 s_1, where svdvals still resolves
# eps s_1), so such a matrix is given to svdvals whole.
GRAM_FLOOR = 1e-4


def singular_values(cores: torch.Tensor, method: SpectraMethod = SpectraMethod.svd) -> torch.Tensor:
    """The singular values of each tall matrix of ``cores`` (``batch x M x N``, ``M >= N``), descending.

    ``svd`` (the default): ``torch.linalg.svdvals``. The Gram methods (float64 only; other types take
    ``svdvals``) are as exact, to about 1e-12 relative on every value the measures read (tested on badly
    spread spectra), and measured against it in ``benchmarks/spectra.py`` (``benchmarks/RESULTS.md``,
    "Spectra fast and exact"): on the CPU neither is faster at Pythia's shapes, where random-initialised
    square weights and every gradient are too spread for the Gram alone; on a GPU, where the symmetric
    eigensolver is far cheaper than the SVD, they are the candidates.

    - ``gram``: the square roots of the eigenvalues of the ``N x N`` Gram ``G = m^T m`` (one matrix
      multiply, then the symmetric eigensolver: 1.5-2x cheaper than an SVD on the CPU) for each matrix
      whose spread ``lambda_min / lambda_max`` is at least ``GRAM_FLOOR``, ``svdvals`` for the others;
    - ``gram_deflated``: :func:`deflated_singular_values`, symmetric eigensolvers for every matrix.

    >>> m = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    >>> singular_values(m[None]).tolist()
    [[4.0, 3.0]]
    >>> singular_values(torch.tensor([[[1.0, 0.0], [0.0, 1e-9]]], dtype=torch.float64)).tolist()  # svdvals
    [[1.0, 1e-09]]
    """
    if method == SpectraMethod.svd or cores.dtype != torch.float64 or cores.shape[0] == 0:
        return torch.linalg.svdvals(cores)
    if method == SpectraMethod.gram_deflated:
        return torch.stack([deflated_singular_values(m) for m in cores])
    values, from_gram = gram_singular_values(cores)
    rest = ~from_gram
    if bool(rest.any()):
        values[rest] = torch.linalg.svdvals(cores[rest])
    return values


def gram_singular_values(cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, exact)``: for each matrix of ``cores`` (``batch x M x N``, ``M >= N``, float64) the
    square roots of its Gram's eigenvalues, descending, where ``exact`` (a bool per matrix) says its
    spread is within ``GRAM_FLOOR``; the other rows of ``values`` are NaN.

    A Cholesky factorisation of ``G - GRAM_FLOOR lambda' I`` (``lambda'`` a power-iteration estimate of
    ``lambda_max``, never above it) tells first, at a sixth of the cost of forming ``G``, which matrices
    cannot pass, so their eigenvalues are not computed only to be thrown away; the eigenvalues of the
    others are then checked against the floor themselves.
    """
    gram = cores.mT @ cores
    values = gram.new_full(gram.shape[:-1], math.nan)
    exact = torch.zeros(gram.shape[0], dtype=torch.bool, device=gram.device)
    candidates = torch.nonzero(_may_pass_floor(gram)).flatten()
    if candidates.numel():
        lam = torch.linalg.eigvalsh(gram[candidates]).flip(-1)  # descending
        passed = lam[:, -1] >= GRAM_FLOOR * lam[:, 0]
        kept = candidates[passed]
        values[kept] = lam[passed].sqrt()
        exact[kept] = True
    return values, exact


def deflated_singular_values(m: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """The singular values of a tall float64 matrix ``m`` (``M x N``) from symmetric eigensolvers only,
    descending, each as exact as ``svdvals``'s (``SpectraMethod.gram_deflated``).

    The eigenvalues ``lambda_i >= GRAM_FLOOR lambda_max`` of the Gram ``G = m^T m`` give their singular
    values to about 1e-12 relative (see ``GRAM_FLOOR``). The others ("the tail") are the singular values
    of ``m`` restricted to the tail's eigenvectors ``V_t``: ``B = m V_t`` (``M x k``), whose own Gram
    ``B^T B`` is taken the same way, its spread measured against its own largest value, until a tail of
    at most 32 columns (or the sixth level) is left to ``svdvals``. ``V_t`` spans the tail to within
    ``eps lambda_max / (GRAM_FLOOR lambda_max)`` of the head, whose leak into ``B`` is orthogonal to the
    tail's own part and moves a squared tail value by its square, ``(eps s_1 / sqrt(GRAM_FLOOR))^2``:
    far below the ``eps s_1`` that rounding ``B`` itself costs, as ``svdvals`` does.

    >>> deflated_singular_values(torch.diag(torch.tensor([1.0, 1e-6, 1e-12], dtype=torch.float64))).tolist()
    [1.0, 1e-06, 1e-12]
    """
    n = m.shape[-1]
    if n <= 32 or depth >= 6:
        return torch.linalg.svdvals(m)
    lam, vectors = torch.linalg.eigh(m.mT @ m)  # ascending
    if not bool(lam[-1] > 0):
        return torch.linalg.svdvals(m)
    tail = int(torch.count_nonzero(lam < GRAM_FLOOR * lam[-1]))
    head = lam[tail:].flip(0).sqrt()
    if tail == 0:
        return head
    rest = deflated_singular_values(m @ vectors[:, :tail], depth + 1)
    return torch.cat([head, rest]).sort(descending=True).values


def _may_pass_floor(gram: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Whether each Gram may have ``lambda_min >= GRAM_FLOOR lambda_max``: ``G - GRAM_FLOOR lambda' I``
    is positive definite (its Cholesky factorisation succeeds), with ``lambda' <= lambda_max`` the Rayleigh
    quotient after a few power iterations (an underestimate only lets a matrix through to the exact check)."""
    v = gram.new_ones(gram.shape[:-1] + (1,))
    for _ in range(iterations):
        v = gram @ v
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    top = (v.mT @ gram @ v)[..., 0, 0]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    _, info = torch.linalg.cholesky_ex(gram - (GRAM_FLOOR * top)[:, None, None] * eye)
    return (info == 0) & (top > 0)


def _core_shape(a: torch.Tensor, b: torch.Tensor | None) -> tuple[int, int]:
    """The shape of ``_svd_core(a, b)``, from the shapes alone."""
    if b is None:
        rows, cols = a.shape
    elif a.shape[1] < min(a.shape[0], b.shape[1]):
        rows = cols = a.shape[1]
    else:
        rows, cols = a.shape[0], b.shape[1]
    return (max(rows, cols), min(rows, cols))


def _svd_core(a: torch.Tensor, b: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """``(core, zeros)``: a matrix with the nonzero singular values of ``a @ b`` (``a``), on its tall
    side (LAPACK's SVD of a wide matrix costs about 3x its transpose's), and how many exact zeros the
    product has besides."""
    a = a.detach().to(dtype)
    if b is None:
        core, zeros = a, 0
    else:
        b = b.detach().to(dtype)
        rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
        if inner >= min(rows, cols):
            core, zeros = a @ b, 0
        else:
            _, ra = torch.linalg.qr(a)
            _, rb = torch.linalg.qr(b.T)
            core, zeros = ra @ rb.T, min(rows, cols) - inner
    return (core.mT if core.shape[-2] < core.shape[-1] else core), zeros


def entry_stats(m: torch.Tensor) -> dict[str, float | None]:
    """pico-analyze's entry-wise measures of a matrix: the Gini coefficient and the Hoyer sparsity of
    the entries' magnitudes, and the largest magnitude, with sums in float64.

    Gini is ``sum_i (2i - n - 1) x_(i) / (n sum_i x_i)`` over the magnitudes sorted ascending. The sort
    runs on the magnitudes in their own precision (exact: |x| of a float is a float of the same type),
    on the CPU through numpy, whose vectorised sort took 20 ms for the 2.4 million float32 entries of a
    3072 x 768 matrix where ``torch.sort`` took 290 ms (2 cores); on a GPU through ``torch.sort``.

    >>> entry_stats(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    {'gini': 0.75, 'hoyer': 1.0, 'inf_norm': 1.0}
    >>> entry_stats(torch.ones(2, 2))
    {'gini': 0.0, 'hoyer': 0.0, 'inf_norm': 1.0}
    """
    magnitudes = m.detach().abs().flatten()
    if magnitudes.dtype not in (torch.float32, torch.float64):
        magnitudes = magnitudes.to(torch.float32)  # half precisions: exact in float32
    n = magnitudes.numel()
    if n == 0:
        return {"gini": 0.0, "hoyer": None, "inf_norm": None}
    ranked = _sorted(magnitudes)
    total, rank_weighted, squares = _ranked_sums(ranked)
    if total == 0:
        return {"gini": 0.0, "hoyer": None, "inf_norm": float(ranked[-1])}
    # sum_i (2i - n - 1) x_(i) = 2 sum_i i x_(i) - (n + 1) total, with i = 1..n
    gini = (2 * rank_weighted - (n + 1) * total) / (n * total)
    hoyer = (math.sqrt(n) - total / math.sqrt(squares)) / (math.sqrt(n) - 1) if n > 1 else None
    return {"gini": gini, "hoyer": hoyer, "inf_norm": float(ranked[-1])}


def _sorted(v: torch.Tensor) -> np.ndarray:
    """``v`` (1-d) sorted ascending, as numpy: numpy's sort on the CPU, ``torch.sort`` on its device."""
    if v.device.type == "cpu":
        return np.sort(v.numpy())
    return torch.sort(v).values.cpu().numpy()


def _ranked_sums(ranked: np.ndarray, block: int = 2**16) -> tuple[float, float, float]:
    """``(sum_i x_i, sum_i i x_i, sum_i x_i^2)`` (i = 1..n) in float64, a block at a time: each block is
    widened to float64 while it is in cache, against one cached ``1..block``. Whole-array float64 copies
    made it 2.6x slower (237 ms against 89 ms for a 4096 x 1024 matrix, of which the sort is 66 ms). The
    products are summed by numpy, not by a BLAS dot: threaded BLAS spins on a busy machine (1.1 s then)."""
    ranks = _ranks(block)
    total = rank_weighted = squares = 0.0
    for start in range(0, ranked.size, block):
        part = ranked[start : start + block].astype(np.float64)
        part_sum = float(part.sum())
        total += part_sum
        rank_weighted += float((ranks[: part.size] * part).sum()) + start * part_sum
        squares += float((part * part).sum())
    return total, rank_weighted, squares


@functools.cache
def _ranks(block: int) -> np.ndarray:
    return np.arange(1, block + 1, dtype=np.float64)


def activation_summary(x: torch.Tensor, near_zero_eps: float) -> dict:
    """Every ``activation_stats`` number of one n x d activation matrix (the ``sv`` list included)."""
    return {
        "n": int(x.shape[0]),
        "d": int(x.shape[1]),
        "mean_norm": mean_row_norm(x),
        "rms": rms(x),
        "std": std(x),
        "max_abs": max_abs(x),
        "kurtosis": excess_kurtosis(x),
        "frac_near_zero": frac_near_zero(x, near_zero_eps),
        "sv": centred_svdvals(x).cpu().tolist(),
    }


# --- Gram sketches -------------------------------------------------------------------------------


def linear_gram(x: torch.Tensor) -> torch.Tensor:
    """The linear-kernel Gram of the rows: ``K = X X^T`` (n x n, float64).

    >>> linear_gram(torch.tensor([[1.0, 2.0], [0.0, 1.0]])).tolist()
    [[5.0, 2.0], [2.0, 1.0]]
    """
    x = as64(x)
    return x @ x.T


def rbf_gram(x: torch.Tensor) -> torch.Tensor:
    """The Gaussian-kernel Gram ``K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2))``, sigma the median distance.

    ``sigma`` is the median (mean of the middle two for an even count) of the Euclidean distances
    ``|x_i - x_j|`` over pairs i < j: the "median heuristic", Kornblith et al.'s ``threshold = 1``
    but taken over distinct pairs, so the n zero self-distances do not pull it down. If that median is 0 (more than half the rows are
    identical) sigma is the mean positive distance, and 1 if every row is the same.

    >>> rbf_gram(torch.tensor([[0.0], [1.0]])).tolist() == [[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]]
    True
    """
    x = as64(x)
    dist = torch.cdist(x, x)
    n = x.shape[0]
    pairs = dist[torch.triu_indices(n, n, offset=1, device=x.device).unbind()]
    sigma = _median(pairs) if pairs.numel() else x.new_tensor(1.0)
    if sigma <= 0:
        positive = pairs[pairs > 0]
        sigma = positive.mean() if positive.numel() else x.new_tensor(1.0)
    return torch.exp(-dist.square() / (2.0 * sigma * sigma))


def _median(v: torch.Tensor) -> torch.Tensor:
    """The median, averaging the two middle values of an even count (``torch.median`` takes the lower)."""
    s = v.sort().values
    m = s.numel()
    return (s[(m - 1) // 2] + s[m // 2]) / 2


def center_biased(k: torch.Tensor) -> torch.Tensor:
    """The doubly centred Gram ``H K H`` with ``H = I - 11^T / n`` (the biased HSIC estimator).

    ``<HKH, HLH> / (n-1)^2`` is the biased HSIC; for the linear kernel ``<HKH, HLH> = ||Y_c^T X_c||_F^2``.

    >>> center_biased(torch.ones(3, 3)).abs().max().item()
    0.0
    """
    k = as64(k)
    k = k - k.mean(dim=0, keepdim=True)
    return k - k.mean(dim=1, keepdim=True)


def center_unbiased(k: torch.Tensor) -> torch.Tensor:
    """The U-centred Gram (Szekely & Rizzo 2014) of ``K`` with its diagonal first set to 0 (call it K~):

    ``U_ij = K~_ij - r_i / (n-2) - r_j / (n-2) + S / ((n-1)(n-2))`` for i != j, ``U_ii = 0``,
    with row sums ``r_i = sum_l K~_il`` and total ``S = sum_kl K~_kl``. Then
    ``<U(K), U(L)> / (n (n-3))`` is the unbiased HSIC of Song et al. (2012); needs n >= 4.

    >>> center_unbiased(torch.ones(4, 4)).abs().max().item()
    0.0
    """
    k = as64(k).clone()
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the U-centred (debiased) Gram needs n >= 4 probe rows, got n={n}")
    k.fill_diagonal_(0.0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    u = k - means[:, None] - means[None, :]
    return u.fill_diagonal_(0.0)


def gram(x: torch.Tensor, kernel: str) -> torch.Tensor:
    """The n x n Gram of ``x``'s rows under ``kernel`` (``linear`` or ``rbf``)."""
    if kernel == "linear":
        return linear_gram(x)
    if kernel == "rbf":
        return rbf_gram(x)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def center(k: torch.Tensor, estimator: str) -> torch.Tensor:
    """``k`` centred for ``estimator``: ``biased`` -> H K H, ``debiased`` -> U-centred."""
    if estimator == "biased":
        return center_biased(k)
    if estimator == "debiased":
        return center_unbiased(k)
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


def frobenius(g: torch.Tensor) -> float:
    """``sqrt(<G, G>)`` computed in float64 (of the values as given, e.g. the stored float32 ones)."""
    return torch.linalg.vector_norm(as64(g)).item()


def cka(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """CKA of two centred Grams of the same probe: ``<G1, G2> / (|G1| |G2|)``, clamped to [-1, 1] as the
    warehouse's ``cka`` macros are (beyond it is the sums' rounding; below 0 is the debiased estimator's);
    NaN where they give NULL (a zero Gram, or one holding a NaN or an infinity).

    >>> g = center_biased(linear_gram(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])))
    >>> round(cka(g, 3.0 * g), 12)
    1.0
    """
    g1, g2 = as64(g1), as64(g2)
    norms = frobenius(g1) * frobenius(g2)
    value = (g1 * g2).sum().item() / norms if norms != 0 else math.nan
    return min(1.0, max(-1.0, value)) if math.isfinite(value) else math.nan
