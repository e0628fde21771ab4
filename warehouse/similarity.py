"""Canonical correlations between two stored Gram sketches: SVCCA and mean CCA, as SQL functions.

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

from layerlake.warehouse.gram import packed_length, unpack

EPS32 = float(np.finfo(np.float32).eps)  # stored sketches are float32


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
        for x, y, k in zip(a.to_pylist(), b.to_pylist(), keeps, strict=True)
    ]
    return pa.array(values, pa.float64())


def install_similarity(con: Any) -> Any:
    """Register ``_ll_svcca(a, b, keep)``, which the ``svcca`` and ``mean_cca`` macros call."""
    con.create_function(
        "_ll_svcca", _svcca_udf, ["DOUBLE[]", "DOUBLE[]", "DOUBLE"], "DOUBLE", type="arrow",
        null_handling="special",  # a mismatched or all-zero pair answers NULL
    )  # fmt: skip
    return con
