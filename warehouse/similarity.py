"""Canonical correlations between two stored Gram sketches (SVCCA, mean CCA), and between two stored
activation matrices (PWCCA), as SQL functions.

A stored sketch is the centred Gram ``K = X~ X~^T`` (n x n, ``warehouse.gram``'s packed form) of a
site's activations X (n probe rows x d features), X~ = X centred over the rows. Its eigenvectors with
nonzero eigenvalue span X~'s column space in sample space, and its eigenvalues are X~'s squared singular
values; so the Gram alone gives what SVCCA (Raghu et al. 2017) keeps: the top-k left singular
directions U_k of X~ holding a share ``keep`` of the variance. The canonical correlations between the
kept directions of two sketches are the singular values of U_k(a)^T U_k(b) (the cosines of the principal
angles between the two subspaces; Bjorck and Golub 1973), and

    svcca(a, b, keep)  = their mean, with the directions holding ``keep`` of the variance (0.99 by default)
    mean_cca(a, b)     = their mean over every direction (rank r: eigenvalues above r's tolerance)

Both need the biased, linear-kernel sketches (``estimator = 'biased' and kernel = 'linear'``) of the
same probe rows (same probe_id and n); with d >= n - 1 every direction is kept by mean_cca and it is 1
whatever the activations, so compare it on sites narrower than the probe. NULL for a NULL, empty,
all-zero or mismatched pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerlake.warehouse.errors import SizeBoundError
from layerlake.warehouse.gram import packed_length, unpack
from layerlake.warehouse.udf import list_rows

EPS32 = float(np.finfo(np.float32).eps)  # stored sketches are float32
# Size bounds, as the work per row is cubic (an eigendecomposition, an SVD): at the bound a row takes
# seconds on one core; a stored probe has a few hundred rows
MAX_GRAM_ROWS = 4_096  # svcca, mean_cca: n of an n x n Gram sketch
MAX_ACTIVATION_VALUES = 1 << 24  # pwcca: n x d values of one activation matrix (128 MB as float64;
# min(n, d) <= 4,096 follows)


def kept_directions(packed: np.ndarray, n: int, keep: float) -> np.ndarray | None:
    """An orthonormal basis (n x k) of the sample-space directions a sketch keeps: the leading
    eigenvectors of its Gram, the fewest whose eigenvalues hold ``keep`` of their sum (``keep >= 1``: all
    above the numerical tolerance, lambda_max * n * float32's eps)."""
    values, vectors = np.linalg.eigh(unpack(packed, n))
    values, vectors = values[::-1], vectors[:, ::-1]
    if not values.size or values[0] <= 0:
        return None
    rank = int(np.count_nonzero(values > values[0] * n * EPS32))
    if keep >= 1:
        return vectors[:, :rank]
    share = np.cumsum(values[:rank]) / values[:rank].sum()
    k = min(rank, int(np.searchsorted(share, keep)) + 1)
    return vectors[:, :k]


def canonical_correlations(a: Any, b: Any, keep: float) -> np.ndarray | None:
    """The canonical correlations between the kept directions of packed sketches ``a`` and ``b``,
    largest first; None when either is missing, empty or all zero, or their sizes differ."""
    if a is None or b is None or len(a) == 0 or len(a) != len(b):
        return None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = int((np.sqrt(8 * a.size + 1) - 1) / 2)
    if packed_length(n) != a.size:
        return None
    if n > MAX_GRAM_ROWS:
        raise SizeBoundError("svcca (and mean_cca)", n, "probe rows", MAX_GRAM_ROWS,
                             "an n x n eigendecomposition per sketch is cubic in n")  # fmt: skip
    qa, qb = kept_directions(a, n, keep), kept_directions(b, n, keep)
    if qa is None or qb is None:
        return None
    return np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)


def mean_canonical_correlation(a: Any, b: Any, keep: float) -> float | None:
    rho = canonical_correlations(a, b, keep)
    return None if rho is None else float(rho.mean())


def _svcca_udf(a, b, keep):  # pyarrow arrays in, one double per row out
    import pyarrow as pa

    keeps = keep.to_pylist()
    values = [
        None if k is None else mean_canonical_correlation(x, y, k)
        for x, y, k in zip(list_rows(a), list_rows(b), keeps, strict=True)
    ]
    return pa.array(values, pa.float64())


EPS16 = float(np.finfo(np.float16).eps)  # stored activations are float16


def stored_activations(x: bytes, d: int) -> np.ndarray | None:
    """The n x d matrix of an ``activations`` row (float16 bytes), as float64; None if it is not one."""
    if x is None or d is None or d <= 0 or len(x) == 0 or len(x) % (2 * d):
        return None
    if len(x) // 2 > MAX_ACTIVATION_VALUES:
        raise SizeBoundError("pwcca", len(x) // 2, "activation values", MAX_ACTIVATION_VALUES,
                             "each matrix is centred and decomposed in float64")  # fmt: skip
    return np.frombuffer(x, dtype="<f2").astype(np.float64).reshape(-1, d)


def pwcca(x: np.ndarray, y: np.ndarray) -> float | None:
    """Projection-weighted CCA of activations ``x`` (n x d1) and ``y`` (n x d2), rows the same probe
    rows: canonical correlations between the centred column spaces, weighted by how much of the smaller
    side's centred features each canonical variate accounts for."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        return None
    bases = []
    for m in (x, y):
        m = m - m.mean(axis=0)
        u, s, _ = np.linalg.svd(m, full_matrices=False)
        # float16 rounding moves each entry by up to eps16/2 of it: the noise matrix's norm is about
        # eps16 * rms * (sqrt(n) + sqrt(d)); directions below it are rounding, not signal
        noise = EPS16 * float(np.sqrt(np.mean(m**2))) * (np.sqrt(m.shape[0]) + np.sqrt(m.shape[1]))
        keep = s > noise if s.size and s[0] > 0 else np.zeros(s.shape, dtype=bool)
        if not keep.any():
            return None
        bases.append((m, u[:, keep]))
    (xc, qx), (yc, qy) = bases
    left, rho, right_t = np.linalg.svd(qx.T @ qy, full_matrices=False)
    c = min(qx.shape[1], qy.shape[1])
    rho = np.clip(rho[:c], 0.0, 1.0)
    if x.shape[1] <= y.shape[1]:  # the variates of the side with fewer features, and its features
        variates, features = qx @ left[:, :c], xc
    else:
        variates, features = qy @ right_t.T[:, :c], yc
    alpha = np.abs(variates.T @ features).sum(axis=1)
    return float((alpha * rho).sum() / alpha.sum()) if alpha.sum() > 0 else None


def _pwcca_udf(xa, da, xb, db):
    import pyarrow as pa

    out = []
    for a, d1, b, d2 in zip(xa.to_pylist(), da.to_pylist(), xb.to_pylist(), db.to_pylist(), strict=True):
        x, y = stored_activations(a, d1), stored_activations(b, d2)
        out.append(None if x is None or y is None else pwcca(x, y))
    return pa.array(out, pa.float64())


def install_similarity(con: Any) -> Any:
    """Register ``_ll_svcca(a, b, keep)`` and ``_ll_pwcca(x_a, d_a, x_b, d_b)``, which the ``svcca``,
    ``mean_cca`` and ``pwcca`` macros call."""
    con.create_function(
        "_ll_pwcca", _pwcca_udf, ["BLOB", "INTEGER", "BLOB", "INTEGER"], "DOUBLE", type="arrow",
        null_handling="special",
    )  # fmt: skip
    con.create_function(
        "_ll_svcca", _svcca_udf, ["DOUBLE[]", "DOUBLE[]", "DOUBLE"], "DOUBLE", type="arrow",
        null_handling="special",  # a mismatched or all-zero pair answers NULL
    )  # fmt: skip
    return con
