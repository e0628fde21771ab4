"""The stored Gram encoding: packing keeps every dot product, and unpacking gives the matrix back."""

from __future__ import annotations

import numpy as np
import pytest

from layerlake.warehouse.gram import pack, packed_length, unpack


def symmetric(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_pack_preserves_frobenius_inner_products(n):
    a, b = symmetric(n, 1), symmetric(n, 2)
    assert pack(a).size == packed_length(n) == n * (n + 1) // 2
    assert pack(a) @ pack(b) == pytest.approx(float((a * b).sum()), rel=1e-12)
    np.testing.assert_allclose(unpack(pack(a), n), a, rtol=1e-12)
    np.testing.assert_allclose(unpack(pack(a)), a, rtol=1e-12)  # n inferred from the length


def test_unpack_refuses_a_wrong_length():
    with pytest.raises(ValueError, match="has 6 values, not 5"):
        unpack(np.zeros(5), 3)
