"""Unit tests of etl.metrics against independent numpy computations (and its doctests)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from layerlake.core.choices import SpectraMethod
from layerlake.etl import metrics


def _rand(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) * np.linspace(0.2, 3.0, d)


def test_doctests_pass():
    result = doctest.testmod(metrics)
    assert result.attempted >= 15
    assert result.failed == 0


def test_summary_matches_numpy():
    x = _rand(20, 7, 0)
    x[0, :3] = 0.0  # three exact zeros: near zero at any eps
    s = metrics.activation_summary(torch.from_numpy(x).float(), near_zero_eps=1e-3)
    x32 = x.astype(np.float32).astype(np.float64)  # the float32 values the function saw
    c = x32 - x32.mean()
    assert (s["n"], s["d"]) == (20, 7)
    assert s["mean_norm"] == pytest.approx(np.mean(np.linalg.norm(x32, axis=1)), rel=1e-12)
    assert s["rms"] == pytest.approx(np.sqrt(np.mean(x32**2)), rel=1e-12)
    assert s["std"] == pytest.approx(np.std(x32), rel=1e-12)
    assert s["max_abs"] == pytest.approx(np.abs(x32).max(), rel=1e-12)
    assert s["kurtosis"] == pytest.approx(np.mean(c**4) / np.mean(c**2) ** 2 - 3.0, rel=1e-10)
    rms = np.sqrt(np.mean(x32**2))
    assert s["frac_near_zero"] == pytest.approx(np.mean(np.abs(x32) <= 1e-3 * rms), abs=0)
    assert s["frac_near_zero"] >= 3 / 140
    expected_sv = np.linalg.svd(x32 - x32.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(s["sv"], expected_sv, rtol=1e-10, atol=1e-12)
    assert list(s["sv"]) == sorted(s["sv"], reverse=True)


def test_kurtosis_of_gaussian_sample_is_near_zero():
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((400, 250)))
    assert abs(metrics.excess_kurtosis(x)) < 0.05


def _kornblith_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space linear CKA (Kornblith et al. 2019): ||Y^T X||^2 / (||X^T X|| ||Y^T Y||), centred."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _stored(x: np.ndarray, kernel: str, estimator: str) -> np.ndarray:
    """The sketch as it is stored: float32, read back into float64."""
    g = metrics.center(metrics.gram(torch.from_numpy(x), kernel), estimator)
    return g.to(torch.float32).numpy().astype(np.float64)


def test_biased_sketch_cka_equals_feature_space_linear_cka():
    x, y = _rand(24, 5, 1), _rand(24, 40, 2) + 0.3 * np.tile(_rand(24, 5, 1), 8)
    gx, gy = _stored(x, "linear", "biased"), _stored(y, "linear", "biased")
    from_sketches = float(np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy)))
    expected = _kornblith_linear_cka(x, y)
    assert 0.05 < expected < 0.95
    assert from_sketches == pytest.approx(expected, abs=1e-6)
    assert metrics.cka(torch.from_numpy(gx), torch.from_numpy(gy)) == pytest.approx(expected, abs=1e-6)


def _song_unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5), written out from the paper's formula."""
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term = np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term -= 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return term / (n * (n - 3))


def test_u_centred_sketches_give_unbiased_hsic_and_debiased_cka():
    x, y = _rand(15, 6, 4), _rand(15, 30, 5)
    kx, ky = x @ x.T, y @ y.T
    ux = metrics.center_unbiased(torch.from_numpy(kx)).numpy()
    uy = metrics.center_unbiased(torch.from_numpy(ky)).numpy()
    n = 15
    assert np.all(np.diag(ux) == 0.0)
    assert np.sum(ux * uy) / (n * (n - 3)) == pytest.approx(_song_unbiased_hsic(kx, ky), rel=1e-10)
    expected = _song_unbiased_hsic(kx, ky) / np.sqrt(
        _song_unbiased_hsic(kx, kx) * _song_unbiased_hsic(ky, ky)
    )
    gx, gy = _stored(x, "linear", "debiased"), _stored(y, "linear", "debiased")
    assert float(np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy))) == pytest.approx(
        expected, abs=1e-6
    )
    # and it is not the biased value: the estimator matters at this n
    assert abs(expected - _kornblith_linear_cka(x, y)) > 1e-3


def test_unbiased_needs_four_rows():
    with pytest.raises(ValueError, match="n >= 4"):
        metrics.center_unbiased(torch.ones(3, 3))


def test_rbf_gram_uses_median_pairwise_distance():
    x = _rand(9, 4, 6)
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    sigma = np.median(dist[np.triu_indices(9, k=1)])
    expected = np.exp(-(dist**2) / (2 * sigma**2))
    np.testing.assert_allclose(metrics.rbf_gram(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)


def test_gram_norm_is_frobenius_in_float64():
    g = torch.from_numpy(_rand(6, 6, 7)).float()
    assert metrics.frobenius(g) == pytest.approx(np.linalg.norm(g.numpy().astype(np.float64)), rel=1e-14)


@pytest.mark.parametrize("inner", [3, 12])
def test_product_svdvals_match_numpy(inner: int):
    a, b = _rand(10, inner, 8), _rand(inner, 9, 9).T.copy().T
    got = metrics.product_svdvals(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()
    a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    expected = np.linalg.svd(a32 @ b32, compute_uv=False)
    assert got.shape == (9,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8 * expected[0])
    assert np.all(np.diff(got) <= 0)


def test_batched_svdvals_equal_each_matrix_alone_in_any_shape_and_chunking():
    """Tall, wide (taken on its tall side) and square matrices, low-rank products kept factored and a full
    product, several of one shape: the batched values equal numpy's SVD of each matrix, whatever the
    batch size (here down to one matrix per call)."""
    shapes = [(9, 4), (4, 9), (9, 4), (6, 6), (4, 9)]
    plain = [(torch.from_numpy(_rand(r, c, i)), None) for i, (r, c) in enumerate(shapes)]
    factored = [
        (torch.from_numpy(_rand(8, 2, 20 + i)), torch.from_numpy(_rand(2, 7, 30 + i))) for i in range(3)
    ] + [(torch.from_numpy(_rand(5, 6, 40)), torch.from_numpy(_rand(6, 5, 41)))]
    matrices = plain + factored
    for max_bytes in (1, 10**9):
        got = metrics.batched_svdvals(matrices, max_batch_bytes=max_bytes)
        for (a, b), sv in zip(matrices, got, strict=True):
            full = a.numpy() if b is None else a.numpy() @ b.numpy()
            expected = np.linalg.svd(full, compute_uv=False)
            assert sv.dtype == torch.float64 and sv.shape == expected.shape
            np.testing.assert_allclose(sv.numpy(), expected, rtol=0, atol=1e-12 * expected[0])


def test_float32_spectra_agree_with_float64_to_float32_precision():
    matrices = [(torch.from_numpy(_rand(48, 16, i)), None) for i in range(3)]
    exact = metrics.batched_svdvals(matrices)
    single = metrics.batched_svdvals(matrices, dtype=torch.float32)
    for e, s in zip(exact, single, strict=True):
        assert s.dtype == torch.float64  # stored as float64 either way
        np.testing.assert_allclose(s.numpy(), e.numpy(), rtol=0, atol=1e-5 * float(e[0]))
        assert not torch.equal(s, e)  # computed in float32 indeed


def test_wide_matrices_are_taken_on_their_tall_side():
    wide = torch.from_numpy(_rand(3, 11, 5))
    np.testing.assert_allclose(
        metrics.svdvals64(wide).numpy(), np.linalg.svd(wide.numpy(), compute_uv=False), rtol=1e-13
    )


# -- the spectra methods on matrices with known, badly spread spectra ----------------------------------


def known_spectra(n: int) -> dict[str, np.ndarray]:
    """n singular values each, descending: log-spread to condition numbers 10 ... 1e12, half exactly 0,
    two tight clusters 100x apart, a power law."""
    rng = np.random.default_rng(n)
    out = {f"cond_1e{k}": np.logspace(0, -k, n) for k in (1, 2, 4, 8, 12)}
    out["rank_half"] = np.concatenate([np.logspace(0, -1, n // 2), np.zeros(n - n // 2)])
    out["two_clusters"] = np.sort(np.repeat([1.0, 1e-2], [n // 2, n - n // 2]) * (1 + 1e-3 * rng.random(n)))[
        ::-1
    ]
    out["power_law"] = np.arange(1, n + 1) ** -1.0
    return out


def with_spectrum(rows: int, s: np.ndarray, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(rows, s.size)))[0]
    v = np.linalg.qr(rng.normal(size=(s.size, s.size)))[0]
    return torch.from_numpy((u * s) @ v.T)


# Every stored measure of a spectrum, as the warehouse's macros compute it (warehouse/sql/macros/), with
# the float64 SVD's tolerance where one is taken. The logarithms are compared on the scale of 1 (an error of
# 1e-10 in log s is one of 1e-10 relative in s), alpha_weighted (alpha log10 lambda_max) on alpha's, the
# rest relative to their value.
SPECTRUM_MEASURES = {
    "erank": "erank({})", "per": "per({}, 64)", "stable_rank": "stable_rank({})",
    "spectral_norm": "spectral_norm({})", "frobenius_norm": "frobenius_norm({})",
    "nuclear_norm": "nuclear_norm({})", "log_norm": "log_norm({})", "log_spectral_norm": "log_spectral_norm({})",
    "matrix_entropy": "matrix_entropy({}, r, c, $eps)", "mp_softrank": "mp_softrank({}, r, c)",
    "powerlaw_alpha": "powerlaw_alpha({})", "ww_alpha": "ww_alpha({})", "alpha_weighted": "alpha_weighted({})",
    "ww_xmin": "ww_xmin({})", "ww_ks": "ww_ks({})", "ww_tail": "ww_tail({})",
    "numerical_rank": "numerical_rank({}, r, c, $eps)", "condition_number": "condition_number({}, r, c, $eps)",
}  # fmt: skip
LOGS = {"log_norm", "log_spectral_norm"}


def sql_measures(con, got: np.ndarray, ref: np.ndarray, rows: int, cols: int) -> dict[str, tuple]:
    """``{measure: (of got, of ref)}`` by the macros."""
    import pyarrow as pa

    con.register("pair", pa.table({"g": [got], "f": [ref], "r": [rows], "c": [cols]}))
    calls = [f"{call.format(side)}" for call in SPECTRUM_MEASURES.values() for side in ("g", "f")]
    values = con.execute(f"select {', '.join(calls)} from pair", {"eps": 2.0**-52}).fetchall()[0]
    con.unregister("pair")
    return {name: values[2 * i : 2 * i + 2] for i, name in enumerate(SPECTRUM_MEASURES)}


@pytest.fixture(scope="module")
def con():
    import duckdb

    from layerlake.warehouse.macros import install_functions

    connection = install_functions(duckdb.connect())
    yield connection
    connection.close()


@pytest.mark.parametrize("method", list(SpectraMethod))
@pytest.mark.parametrize("rows", [64, 256])
def test_every_spectra_method_is_as_exact_as_svdvals_on_badly_spread_spectra(con, method, rows):
    """Against the known values: every value within svdvals' own accuracy (a few eps s_1), 1e-12 relative
    down to 1e-2 s_1. Every stored measure (each spectrum macro) within 1e-10 relative of svdvals', the
    numerical rank equal, but the condition number: it reads the smallest value kept, s_r, which no
    float64 method (svdvals included) has to better than about eps s_1, a relative error of eps s_1 / s_r;
    it is checked against the truth at that accuracy (svdvals' and the method's alike)."""
    for k, (name, s) in enumerate(known_spectra(64).items()):
        m = with_spectrum(rows, s, seed=rows + k)
        (got,) = metrics.batched_svdvals([(m, None)], method=method)
        got, ref = got.numpy(), torch.linalg.svdvals(m).numpy()
        assert np.all(np.diff(got) <= 0), name
        assert np.abs(got - s).max() <= 200 * 2.0**-52 * s[0], name  # svdvals' own: up to ~50
        large = s >= 1e-2 * s[0]
        assert np.abs(got - s)[large].max() <= 1e-12 * s[large].min(), name
        measures = sql_measures(con, got, ref, rows, 64)
        for measure, (have, want) in measures.items():
            if measure == "condition_number":
                kept = s[s > s[0] * rows * 2.0**-52]
                true_cond = kept[0] / kept[-1]
                for value in (have, want):  # both within 200 eps s_1 / s_r of the truth
                    assert value == pytest.approx(true_cond, rel=200 * 2.0**-52 * true_cond), name
            elif want is None or measure in ("numerical_rank", "ww_tail"):
                assert have == want, (name, measure)
            else:
                scale = 1.0 if measure in LOGS else abs(want)
                if measure == "alpha_weighted":
                    scale = abs(measures["ww_alpha"][1])
                assert abs(have - want) <= 1e-10 * scale, (name, measure, have, want)


def test_the_gram_is_taken_only_where_its_eigenvalues_are_exact():
    """The Gram's eigenvalues are used for a matrix spread at most GRAM_FLOOR in lambda (a condition
    number of 100), svdvals for a wider one: there a Gram's eigenvalue near eps lambda_max loses all
    relative accuracy (at a condition number of 1e5 the Gram alone is off by more than 1e-9)."""
    s_ok, s_wide = np.logspace(0, -1.9, 64), np.logspace(0, -5, 64)
    ok, wide = with_spectrum(128, s_ok, 1), with_spectrum(128, s_wide, 2)
    _, exact = metrics.gram_singular_values(torch.stack([ok, wide]))
    assert exact.tolist() == [True, False]
    alone = torch.linalg.eigvalsh(wide.mT @ wide).flip(0).clamp_min(0).sqrt().numpy()
    assert np.abs(alone - s_wide).max() / s_wide.min() > 1e-9  # what the fallback avoids
