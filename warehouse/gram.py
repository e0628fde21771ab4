"""How a symmetric n x n Gram matrix is stored: its upper triangle, packed so dot products survive.

``pack(G) = [G_00, G_11, ..., G_(n-1)(n-1), sqrt(2) G_01, sqrt(2) G_02, ..., sqrt(2) G_(n-2)(n-1)]``:
the diagonal, then the strict upper triangle row by row, scaled by sqrt(2). For symmetric A and B,
``<pack(A), pack(B)> = sum_i A_ii B_ii + 2 sum_{i<j} A_ij B_ij = <A, B>_F``, so CKA between two stored
sketches is still ``dot(a, b) / sqrt(dot(a, a) dot(b, b))`` while the bytes stored and scanned halve
(n (n + 1) / 2 values instead of n^2: 8,256 instead of 16,384 at the study's n = 128).
"""

from __future__ import annotations

import numpy as np

SQRT2 = np.sqrt(2.0)


def packed_length(n: int) -> int:
    return n * (n + 1) // 2


def pack(g: np.ndarray) -> np.ndarray:
    """The stored form of symmetric ``g`` (n x n), in ``g``'s dtype.

    >>> a = np.array([[1.0, 2.0], [2.0, 3.0]])
    >>> pack(a).round(4).tolist()
    [1.0, 3.0, 2.8284]
    >>> float(pack(a) @ pack(a)) == float((a * a).sum())
    True
    """
    g = np.asarray(g)
    n = g.shape[0]
    rows, cols = np.triu_indices(n, k=1)
    return np.concatenate([np.diagonal(g), g[rows, cols] * SQRT2]).astype(g.dtype, copy=False)


def unpack(values: np.ndarray | list, n: int | None = None) -> np.ndarray:
    """The n x n matrix back from its stored form (``n`` is stored beside every sketch).

    >>> unpack(pack(np.array([[1.0, 2.0], [2.0, 3.0]]))).tolist()
    [[1.0, 2.0], [2.0, 3.0]]
    """
    v = np.asarray(values, dtype=np.float64)
    if n is None:
        n = int((np.sqrt(8 * v.size + 1) - 1) / 2)
    if v.size != packed_length(n):
        raise ValueError(f"a packed {n} x {n} Gram has {packed_length(n)} values, not {v.size}")
    g = np.diag(v[:n])
    rows, cols = np.triu_indices(n, k=1)
    g[rows, cols] = g[cols, rows] = v[n:] / SQRT2
    return g
