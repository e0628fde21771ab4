"""WeightWatcher's power-law fit of a spectrum's eigenvalues, as the SQL function ``_ll_ww_fit(eig)``
that ``ww_alpha``, ``ww_ks``, ``ww_tail``, ``ww_xmin`` and ``alpha_weighted`` read.

For ascending eigenvalues eig[1..n] (all > 0), every candidate x_min = eig[i] but the largest gives the
tail eig[i..n] (m = n - i + 1 values), its continuous maximum-likelihood exponent

    alpha_i = 1 + m / (sum_{j>=i} ln eig[j] - m ln eig[i])

and its Kolmogorov-Smirnov distance to the fitted power law

    D_i = max_{j>=i} | 1 - (eig[j] / eig[i])^(1 - alpha_i) - (j - i) / m |      (1 when alpha_i <= 1)

(Clauset, Shalizi and Newman 2009; WeightWatcher's default fit). The fit is the candidate with the
smallest D (the first on ties): ``[D, i, alpha, x_min, m]``. NULL with fewer than 2 eigenvalues, when
no candidate's tail has an exponent (every eigenvalue equal: no power law to fit), or when an eigenvalue
is NaN or infinite (a diverged matrix: there is no fit, and a partial one would read as a real alpha).

In numpy rather than SQL: the KS scan is O(n^2) per spectrum, and DuckDB's lambdas over every
candidate's tail were 4x the weightwatcher package at 2,048 eigenvalues (0.34 s a spectrum), where
this is a few milliseconds (``benchmarks/macros.py``). The tails are scanned a block of candidates at a
time, so memory stays at a few MB whatever n.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerlake.warehouse.errors import SizeBoundError
from layerlake.warehouse.udf import list_rows

BLOCK_VALUES = 1 << 20  # candidate x tail values scanned at once (8 MB of float64)
MAX_EIGENVALUES = 1 << 15  # the fit takes at most this many eigenvalues: its KS scan is O(n^2), about
# 5 s at this size on one core (22 s at 60,000); the largest weight matrices stored (d_model 16,384) fit


def ww_fit(eig: np.ndarray) -> list[float] | None:
    """``[D, i, alpha, x_min, m]`` of the best candidate (i 1-based, as in SQL); None for n < 2, for
    equal eigenvalues (no exponent) and for a NaN or an infinity among them."""
    eig = np.asarray(eig, dtype=np.float64)
    n = eig.size
    if n > MAX_EIGENVALUES:
        raise SizeBoundError("ww_alpha (and ww_ks, ww_tail, ww_xmin, alpha_weighted)", n,
                             "eigenvalues", MAX_EIGENVALUES, "its KS scan is quadratic")  # fmt: skip
    if n < 2 or not np.isfinite(eig).all():
        return None
    i = np.arange(n - 1)  # candidates, 0-based: every value but the largest
    m = (n - i).astype(np.float64)
    logs = np.log(eig)
    tail_logs = np.cumsum(logs[::-1])[::-1]  # sum_{j>=i} ln eig[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = tail_logs[:-1] - m * logs[:-1]
        alpha = np.where(denominator != 0, 1 + m / denominator, np.nan)
    distance = np.ones(n - 1)
    fitted = np.flatnonzero(alpha > 1)
    rows = max(1, BLOCK_VALUES // n)
    for start in range(0, fitted.size, rows):
        block = fitted[start : start + rows]
        first = block[0]  # the block's tails all lie in eig[first:]
        j = np.arange(first, n)
        # (eig[j] / eig[i])^(1 - alpha_i) as exp((1 - alpha_i)(ln eig[j] - ln eig[i])): numpy's exp is
        # vectorised, its pow is not (3x here)
        with np.errstate(over="ignore", invalid="ignore"):
            fitted_cdf = np.exp((1 - alpha[block, None]) * (logs[None, first:] - logs[block, None]))
        gap = np.abs(1 - fitted_cdf - (j[None, :] - block[:, None]) / m[block, None])
        gap[j[None, :] < block[:, None]] = -np.inf  # only the candidate's own tail
        distance[block] = gap.max(axis=1)
    if fitted.size == 0:
        return None  # no tail with an exponent: every eigenvalue equal, nothing to fit
    best = int(np.argmin(np.where(np.isnan(distance), np.inf, distance)))  # the first of the smallest
    fit_alpha = None if np.isnan(alpha[best]) else float(alpha[best])  # a flat tail has none
    return [float(distance[best]), float(best + 1), fit_alpha, float(eig[best]), float(m[best])]


def _ww_fit_udf(eigs: Any) -> Any:  # a pyarrow list array in, one list of 5 doubles per row out
    import pyarrow as pa

    fits = [None if eig is None else ww_fit(eig) for eig in list_rows(eigs)]
    return pa.array(fits, pa.list_(pa.float64()))


def install_powerlaw(con: Any) -> Any:
    """Register ``_ll_ww_fit(eig DOUBLE[]) -> DOUBLE[]`` (``ww_fit`` on each row)."""
    con.create_function(
        "_ll_ww_fit", _ww_fit_udf, ["DOUBLE[]"], "DOUBLE[]", type="arrow", null_handling="special"
    )
    return con
