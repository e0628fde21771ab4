"""How a symmetric n x n Gram matrix is stored: its upper triangle, packed so dot products survive.

``pack(G) = [G_00, G_11, ..., G_(n-1)(n-1), sqrt(2) G_01, sqrt(2) G_02, ..., sqrt(2) G_(n-2)(n-1)]``:
the diagonal, then the strict upper triangle row by row, scaled by sqrt(2). For symmetric A and B,
``<pack(A), pack(B)> = sum_i A_ii B_ii + 2 sum_{i<j} A_ij B_ij = <A, B>_F``, so CKA between two stored
sketches is still ``dot(a, b) / sqrt(dot(a, a) dot(b, b))`` while the bytes stored and scanned halve
(n (n + 1) / 2 values instead of n^2: 8,256 instead of 16,384 at the study's n = 128).
"""

from __future__ import annotations

from typing import Any

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


# -- the stored bytes (schema version 3) ---------------------------------------------------------------
#
# A sketch's packed values are stored as one Parquet BYTE_ARRAY of little-endian float32 (DuckDB BLOB),
# written uncompressed, instead of a Parquet list of floats. Measured on the full-study query benchmark
# (30,184 Grams at n = 128, 2 shared cores): DuckDB scans every Gram as a list in 2.8 s (one repetition
# level per value to decode) and as these bytes in 0.3 s (0.9 s-1.3 s more with zstd, which saves 7 %
# on float noise). Producers still hand a float32 list (``schema.SKETCHES.arrow_schema()``); the writer
# encodes it, and the ``sketches`` view shows both the list (``gram``, decoded only when selected) and
# the bytes (``gram_bytes``, what the CKA recipes read).

STORED_DTYPE = np.dtype("<f4")


def to_bytes(values: np.ndarray | list) -> bytes:
    """The stored bytes of packed values.

    >>> from_bytes(to_bytes([1.0, 2.5])).tolist()
    [1.0, 2.5]
    """
    return np.asarray(values, dtype=STORED_DTYPE).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    """The packed float32 values of stored bytes (a read-only view, no copy)."""
    return np.frombuffer(data, dtype=STORED_DTYPE)


def stored_dot(a: bytes | None, b: bytes | None) -> float | None:
    """``<A, B>`` of two stored Grams, every product and the sum in float64 (a float32 sum is off by
    about 1e-6 relative at n = 128); None when either is missing or their sizes differ.

    >>> stored_dot(to_bytes([1.0, 2.0]), to_bytes([3.0, 4.0]))
    11.0
    """
    if a is None or b is None or len(a) != len(b) or len(a) % STORED_DTYPE.itemsize:
        return None
    # Not np.dot: above about 16,000 values BLAS splits a dot product over threads, which took 11 ms
    # instead of 0.03 ms a pair (n = 256) on the shared 2-core dev VM; numpy's own pairwise sum does not.
    return float(np.multiply(from_bytes(a), from_bytes(b), dtype=np.float64).sum())


def bytes_column(column: Any) -> Any:
    """A pyarrow column of float32 lists (one Gram a row) as the stored bytes, one ``binary`` a row."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        rows = chunk.to_numpy(zero_copy_only=False)
        encoded = pa.array([None if v is None else to_bytes(v) for v in rows], pa.binary())
        out += encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    return pa.chunked_array(out, pa.binary())


def values_column(blobs: Any) -> Any:
    """The float32 lists of a pyarrow column of stored bytes (the inverse of ``bytes_column``); the values
    are read from the bytes' buffer in one piece, not row by row."""
    import pyarrow as pa

    if isinstance(blobs, pa.ChunkedArray):
        blobs = blobs.combine_chunks() if blobs.num_chunks else pa.array([], pa.binary())
    offset_type = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    _, offsets_buffer, data_buffer = blobs.buffers()
    if offsets_buffer is None:  # an empty array
        return pa.array([], pa.list_(pa.float32()))
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[blobs.offset : blobs.offset + len(blobs) + 1]
    starts = offsets - offsets[0]
    if np.any(starts % STORED_DTYPE.itemsize):
        raise ValueError("a stored Gram's byte length is not a multiple of 4")
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    values = data[offsets[0] : offsets[-1]].copy().view(STORED_DTYPE)
    return pa.ListArray.from_arrays(
        pa.array((starts // STORED_DTYPE.itemsize).astype(np.int32)),
        pa.array(values, pa.float32()),
        mask=blobs.is_null() if blobs.null_count else None,
    )


def install_gram_functions(con: Any) -> Any:
    """Register the Python functions behind the stored bytes: ``_ll_gram_dot(a, b)`` (``stored_dot``,
    which the ``cka_bytes`` macro calls) and ``_ll_gram_values(bytes)`` (``values_column``, which the
    ``sketches`` view uses to show ``gram`` as a list).

    ``_ll_gram_dot`` is a scalar (row by row) function on purpose: DuckDB hands it each BLOB as Python
    bytes, while an Arrow function pays DuckDB's conversion of every BLOB to Arrow first; on the full-study
    query benchmark the Arrow version took 2.5 s (1.8 s of it that conversion), the scalar one 0.9 s.
    """
    con.create_function(
        "_ll_gram_dot", stored_dot, ["BLOB", "BLOB"], "DOUBLE", type="native", null_handling="special"
    )  # a mismatched pair answers NULL
    con.create_function("_ll_gram_values", values_column, ["BLOB"], "FLOAT[]", type="arrow")
    return con
