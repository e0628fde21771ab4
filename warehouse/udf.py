"""What the Python SQL functions (``warehouse.powerlaw``, ``warehouse.similarity``) share: an Arrow list
column's rows as numpy arrays, without a Python float per value.

DuckDB hands an Arrow function a chunked array; ``to_pylist()`` would make a Python float of every value
(32 bytes for each 8 stored: a row of 8 million values is a quarter of a gigabyte). Here each chunk's
values are copied out once and every row is a view into them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa


def list_rows(column: Any) -> Iterator[np.ndarray | None]:
    """Each row of the Arrow list column ``column`` (an array or a chunked array) as a float64 array
    (a view), or None for a NULL row."""
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        offsets = chunk.offsets.to_numpy()  # a slice's offsets index into its whole child array
        values = chunk.values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        for i in range(len(chunk)):
            yield values[offsets[i] : offsets[i + 1]] if valid[i] else None
