"""The SQL macros of warehouse/sql/macros/ against independent numpy computations."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest

from layerlake.warehouse.macros import install_functions, public_macros
from layerlake.warehouse.synthetic import centred_gram

MACROS = [m.name for m in public_macros()]

CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


@pytest.fixture(scope="module")
def con():
    connection = install_functions(duckdb.connect(config=CONFIG))
    yield connection
    connection.close()


def q(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()[0][0]


# -- numpy references ---------------------------------------------------------------------------------


def np_erank(s):
    s = np.asarray(s, dtype=float)
    s = s[s > 0]
    if s.size == 0:
        return None
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def np_alpha(s):
    lam = np.sort(np.asarray(s, dtype=float) ** 2)[::-1]
    lam = lam[lam > 0]
    k = lam.size // 2
    if k == 0:
        return None
    tail = lam[:k]
    denom = np.log(tail / tail[-1]).sum()
    return None if denom == 0 else float(1 + k / denom)


def np_measures(s):
    s = np.asarray(s, dtype=float)
    pos = s[s > 0]
    return {
        "erank": np_erank(s),
        "stable_rank": float((s**2).sum() / s.max() ** 2) if pos.size else None,
        "spectral_norm": float(s.max()) if s.size else None,
        "nuclear_norm": float(s.sum()) if s.size else None,
        "frobenius_norm": float(np.sqrt((s**2).sum())) if s.size else None,
        "powerlaw_alpha": np_alpha(s),
    }


RNG = np.random.default_rng(0)
SPECTRA = {
    "random": np.sort(RNG.gamma(2.0, 1.0, size=64))[::-1],
    "heavy_tail": np.sort(RNG.pareto(2.5, size=200) + 1)[::-1],
    "with_zeros": np.array([3.0, 2.0, 1.0, 0.0, 0.0]),
    "one_value": np.array([2.5]),
    "ties": np.array([1.0, 1.0, 1.0, 1.0]),
    "unsorted": np.array([1.0, 4.0, 2.0, 3.0]),
    "all_zero": np.array([0.0, 0.0, 0.0]),
    "empty": np.array([]),
}


EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


def np_significant(s, rows, cols, eps=EPS64):
    """numpy.linalg.matrix_rank's rule: the values above s_max * max(rows, cols) * eps."""
    s = np.asarray(s, dtype=float)
    return s[s > s.max() * max(rows, cols) * eps] if s.size else s


def np_shape_measures(s, rows, cols, eps=EPS64):
    keep = np_significant(s, rows, cols, eps)
    return {
        "numerical_rank": int(keep.size),
        "condition_number": float(keep.max() / keep.min()) if keep.size else None,
    }


@pytest.mark.parametrize("case", list(SPECTRA))
def test_spectrum_macros_match_numpy(con, case):
    s = SPECTRA[case]
    expected = np_measures(s)
    for macro, want in expected.items():
        got = q(con, f"select {macro}(?::DOUBLE[])", s.tolist())
        if want is None:
            assert got is None, (macro, case, got)
        else:
            assert got == pytest.approx(want, rel=1e-9), (macro, case)
    rows, cols = max(len(s), 1), len(s) + 3  # the matrix these values could belong to
    for eps in (EPS64, EPS32, 0.1):  # the tolerance follows the precision the values were computed in
        for macro, want in np_shape_measures(s, rows, cols, eps).items():
            got = q(con, f"select {macro}(?::DOUBLE[], ?, ?, ?)", s.tolist(), rows, cols, eps)
            if want is None:
                assert got is None, (macro, case, got)
            else:
                assert got == pytest.approx(want, rel=1e-9), (macro, case, eps)


def low_rank(rows: int, cols: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dense float64 rows x cols matrix of exactly ``rank`` with known singular values (1 .. 1/50),
    multiplied out so its SVD shows the rounding noise in place of the missing ones."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, rank)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, rank)))
    s = np.geomspace(1.0, 1.0 / 50, rank)
    return (u * s) @ v.T, s


RANK_DEFICIENT = {  # rows, cols, rank
    "square": (40, 40, 12),
    "tall": (64, 24, 5),
    "wide": (16, 96, 8),  # an OV head's shape: d_model x d_model of rank d_head is the same story
    "rank_one": (30, 20, 1),
}


@pytest.mark.parametrize("case", list(RANK_DEFICIENT))
def test_rank_deficient_matrices_get_their_rank_and_a_finite_condition_number(con, case):
    rows, cols, rank = RANK_DEFICIENT[case]
    m, s_true = low_rank(rows, cols, rank, seed=rows + cols)
    sv = np.linalg.svd(m, compute_uv=False)
    assert sv[rank:].max(initial=0.0) < 1e-14  # rounding noise where the missing values would be
    assert sv[0] / sv[sv > 0].min() > 1e12  # which is what the old condition_number(sv) divided by
    got_rank = q(con, "select numerical_rank(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS64)
    assert got_rank == rank == np.linalg.matrix_rank(m)
    got = q(con, "select condition_number(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS64)
    # the condition number of m restricted to its rank: s_1 / s_r of the r x r core U_r^T m V_r
    u, _, vt = np.linalg.svd(m)
    restricted = np.linalg.cond(u[:, :rank].T @ m @ vt[:rank].T)
    assert np.isfinite(got)
    assert got == pytest.approx(restricted, rel=1e-9)
    assert got == pytest.approx(s_true[0] / s_true[-1], rel=1e-9)


@pytest.mark.parametrize("case", list(RANK_DEFICIENT))
def test_a_matrix_computed_in_float32_gets_its_rank_with_float32s_eps(con, case):
    """A product of rank r formed in float32 (activations and gradients of a float32 pass) keeps its missing
    directions at float32's rounding, about 1e-8 of s_1: with eps = 2^-23 it gets rank r and a condition
    number of its own; with 2^-52 the rounding counted as rank (a condition number near 1e8)."""
    rows, cols, rank = RANK_DEFICIENT[case]
    rng = np.random.default_rng(rows * cols)
    u = np.linalg.qr(rng.normal(size=(rows, rank)))[0].astype(np.float32)
    v = np.linalg.qr(rng.normal(size=(cols, rank)))[0].astype(np.float32)
    s = np.geomspace(1.0, 1.0 / 50, rank).astype(np.float32)
    m = (u * s) @ v.T  # formed in float32
    sv = np.linalg.svd(m.astype(np.float64), compute_uv=False)  # the float64 SVD layerlake stores
    assert q(con, "select numerical_rank(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS32) == rank
    cond = q(con, "select condition_number(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS32)
    assert cond == pytest.approx(50.0 if rank > 1 else 1.0, rel=1e-5)
    if rank < min(rows, cols):  # what the float64 tolerance made of it
        assert q(con, "select numerical_rank(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS64) > rank


def test_centred_activations_drop_the_direction_centring_removed(con):
    """activation_stats stores the spectrum of the column-centred n x d matrix: with n <= d it has rank
    n - 1 and one noise value, which condition_number(sv, n, d) ignores."""
    x = np.random.default_rng(5).normal(size=(10, 32))
    xc = x - x.mean(axis=0)
    sv = np.linalg.svd(xc, compute_uv=False)
    assert q(con, "select numerical_rank(?::DOUBLE[], ?, ?, ?)", sv.tolist(), 10, 32, EPS64) == 9
    got = q(con, "select condition_number(?::DOUBLE[], ?, ?, ?)", sv.tolist(), 10, 32, EPS64)
    assert got == pytest.approx(sv[0] / sv[8], rel=1e-12)
    assert got < 1e3 < sv[0] / sv[9]  # dividing by the noise value is what the old macro did


@pytest.mark.parametrize(("rows", "cols"), [(6, 6), (9, 4), (3, 8)])
def test_condition_number_of_a_full_rank_matrix_is_numpys(con, rows, cols):
    m = np.random.default_rng(rows * cols).normal(size=(rows, cols))
    sv = np.linalg.svd(m, compute_uv=False)
    got = q(con, "select condition_number(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS64)
    assert got == pytest.approx(np.linalg.cond(m), rel=1e-12)
    assert q(con, "select numerical_rank(?::DOUBLE[], ?, ?, ?)", sv.tolist(), rows, cols, EPS64) == min(
        rows, cols
    )


def test_tolerance_is_relative_and_scales_with_the_larger_side(con):
    """Just above and just below tol = s_max * max(rows, cols) * eps, for values of any magnitude."""
    for scale in (1e-30, 1.0, 1e30):
        for eps in (EPS64, EPS32):
            tol = scale * 50 * eps
            above, below = [scale, 1.01 * tol], [scale, 0.99 * tol]
            assert q(con, "select numerical_rank(?::DOUBLE[], 50, 2, ?)", above, eps) == 2
            assert q(con, "select numerical_rank(?::DOUBLE[], 2, 50, ?)", below, eps) == 1
            assert q(con, "select condition_number(?::DOUBLE[], 2, 50, ?)", below, eps) == 1.0


def test_shape_macros_need_the_shape(con):
    assert q(con, "select numerical_rank([1.0, 0.5], NULL, 2, 1e-16)") is None
    assert q(con, "select condition_number([1.0, 0.5], 2, NULL, 1e-16)") is None
    assert q(con, "select numerical_rank([1.0, 0.5], 2, 2, NULL)") is None  # no precision, no rank
    assert q(con, "select numerical_rank([]::DOUBLE[], 0, 3, 1e-16)") == 0
    for call in ("condition_number([1.0, 0.5])", "condition_number([1.0, 0.5], 2, 2)"):  # the eps is needed
        with pytest.raises(duckdb.BinderException, match=r"condition_number\(sv, rows, cols, eps\)"):
            q(con, f"select {call}")


@pytest.mark.parametrize("macro", ["erank(?::DOUBLE[])", "numerical_rank(?::DOUBLE[], 8, 8, 1e-16)",
                                   "condition_number(?::DOUBLE[], 8, 8, 1e-16)",
                                   "matrix_entropy(?::DOUBLE[], 8, 8, 1e-16)",
                                   "powerlaw_alpha(?::DOUBLE[])"])  # fmt: skip
def test_null_values_inside_a_spectrum_are_dropped_like_zeros(con, macro):
    """A full-rank spectrum skips the per-element filter; one holding a NULL must not, and answers as if
    the NULL were not there."""
    clean = [4.0, 3.0, 2.0, 1.0, 0.5]
    want = q(con, f"select {macro}", clean)
    for holey in ([4.0, None, 3.0, 2.0, 1.0, 0.5], [4.0, 3.0, 2.0, 1.0, 0.5, None]):
        assert q(con, f"select {macro}", holey) == pytest.approx(want, rel=1e-12), holey


def test_known_values(con):
    assert q(con, "select erank([1.0, 1.0, 1.0, 1.0])") == pytest.approx(4.0)
    assert q(con, "select erank([5.0, 0.0])") == pytest.approx(1.0)
    assert q(con, "select per([1.0, 1.0], 4)") == pytest.approx(0.5)
    assert q(con, "select stable_rank([2.0, 2.0, 2.0])") == pytest.approx(3.0)
    # lambda = s^2 = 4, 1 (top half of [2, 1, 0.5, 0.25] squared): alpha = 1 + 2 / ln(4 / 1).
    assert q(con, "select powerlaw_alpha([2.0, 1.0, 0.5, 0.25])") == pytest.approx(1 + 2 / np.log(4.0))


SHAPED = {  # the arguments after sv: the shape, and the precision for the rank-based ones
    "condition_number": ", 3, 4, 1e-16", "numerical_rank": ", 3, 4, 1e-16", "matrix_entropy": ", 3, 4, 1e-16",
    "mp_softrank": ", 3, 4",
}  # fmt: skip


@pytest.mark.parametrize(
    "macro",
    [m for m in MACROS if m not in ("cka", "cka_normed", "cka_bytes", "per", "svcca", "mean_cca", "pwcca")],
)
def test_null_spectrum_is_null(con, macro):
    shape = SHAPED.get(macro, "")
    assert q(con, f"select {macro}(NULL::DOUBLE[]{shape})") is None


def test_per_with_bad_k_is_null(con):
    assert q(con, "select per([1.0, 2.0], 0)") is None
    assert q(con, "select per([1.0, 2.0], NULL)") is None
    assert q(con, "select per([1.0, 2.0], 2)") == pytest.approx(np_erank([1.0, 2.0]) / 2)


def test_no_nan_from_float_lists(con):
    # FLOAT[] (as stored for Grams) and DOUBLE[] both work; zeros never give NaN.
    assert q(con, "select erank([0, 0]::FLOAT[])") is None
    assert q(con, "select condition_number([0, 0]::FLOAT[], 2, 2, 1e-16)") is None
    assert q(con, "select numerical_rank([0, 0]::FLOAT[], 2, 2, 1e-16)") == 0


def direct_linear_cka(x, y):
    """Feature-space linear CKA (Kornblith et al. 2019): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def test_cka_on_grams_equals_direct_cka(con):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 48))
    y = x @ rng.normal(size=(48, 20)) + 0.5 * rng.normal(size=(32, 20))
    a = centred_gram(x).astype(np.float32).ravel().tolist()
    b = centred_gram(y).astype(np.float32).ravel().tolist()
    want = direct_linear_cka(x, y)
    assert 0.1 < want < 0.99
    assert q(con, "select cka(?::FLOAT[], ?::FLOAT[])", a, b) == pytest.approx(want, rel=1e-5)
    na, nb = np.linalg.norm(centred_gram(x)), np.linalg.norm(centred_gram(y))
    assert q(con, "select cka_normed(?::FLOAT[], ?::FLOAT[], ?, ?)", a, b, na, nb) == pytest.approx(
        want, rel=1e-5
    )
    assert q(con, "select cka(?::FLOAT[], ?::FLOAT[])", a, a) == pytest.approx(1.0, rel=1e-6)


def test_cka_on_stored_bytes_equals_float64_numpy(con):
    from layerlake.warehouse.gram import pack, to_bytes

    rng = np.random.default_rng(4)
    x = rng.normal(size=(128, 64))
    y = x @ rng.normal(size=(64, 32)) + rng.normal(size=(128, 32))
    a, b = (pack(centred_gram(m)).astype(np.float32) for m in (x, y))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.sqrt(a64 @ a64), np.sqrt(b64 @ b64)
    want = (a64 @ b64) / (na * nb)
    got = q(con, "select cka_bytes(?::BLOB, ?::BLOB, ?, ?)", to_bytes(a), to_bytes(b), na, nb)
    assert got == pytest.approx(want, rel=1e-12)
    float32_sum = q(con, "select list_dot_product(?::FLOAT[], ?::FLOAT[])", a.tolist(), b.tolist()) / (
        na * nb
    )
    assert got == pytest.approx(float32_sum, rel=1e-4)  # the same value; the float32 sum is the rough one
    assert q(con, "select cka_bytes(?::BLOB, ?::BLOB, 1.0, 0.0)", to_bytes(a), to_bytes(b)) is None
    assert q(con, "select cka_bytes(?::BLOB, ?::BLOB, 1.0, 1.0)", to_bytes(a), to_bytes(b[:-1])) is None
    assert q(con, "select cka_bytes(NULL::BLOB, ?::BLOB, 1.0, 1.0)", to_bytes(b)) is None


def test_debiased_cka_matches_numpy_formula(con):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(24, 64)), rng.normal(size=(24, 64))
    ua, ub = centred_gram(x, "debiased"), centred_gram(y, "debiased")
    want = (ua * ub).sum() / np.sqrt((ua * ua).sum() * (ub * ub).sum())
    # Independent random features: the debiased estimate is near 0, the biased one is not.
    assert abs(want) < 0.2 < direct_linear_cka(x, y)
    got = q(con, "select cka(?::DOUBLE[], ?::DOUBLE[])", ua.ravel().tolist(), ub.ravel().tolist())
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_cka_is_clamped_to_plus_minus_one_where_rounding_pushes_it_beyond(con):
    """|CKA| <= 1 by Cauchy-Schwarz. A stored Gram's self-CKA (cka_bytes with the norm extraction stores,
    torch's, against numpy's sum of the products) rounds above 1 for most Grams; it comes out 1. The
    opposite Gram gives -1, and NULL stays NULL."""
    import torch

    from layerlake.etl.metrics import frobenius
    from layerlake.warehouse.gram import stored_dot

    rng = np.random.default_rng(0)
    above = 0
    for _ in range(20):
        gram = rng.normal(size=2080).astype("<f4")  # a packed 64 x 64 Gram, as stored
        blob, norm = gram.tobytes(), frobenius(torch.from_numpy(gram))
        above += stored_dot(blob, blob) / (norm * norm) > 1.0  # unclamped: rounding lifts it above 1
        assert q(con, "select cka_bytes($1, $1, $2, $2)", blob, norm) <= 1.0
        assert q(con, "select cka_normed($1::DOUBLE[], $1::DOUBLE[], $2, $2)", gram.tolist(), norm) <= 1.0
    assert above >= 5  # the clamp was needed
    a = rng.normal(size=45)
    tiny = float(np.linalg.norm(a)) * (1 - 1e-9)  # a norm a hair too small
    assert q(con, "select cka_normed($1::DOUBLE[], $1::DOUBLE[], $2, $2)", a.tolist(), tiny) == 1.0
    assert (
        q(con, "select cka_normed($1::DOUBLE[], $2::DOUBLE[], $3, $3)", a.tolist(), (-a).tolist(), tiny)
        == -1.0
    )
    assert q(con, "select cka($1::DOUBLE[], $2::DOUBLE[])", a.tolist(), (-2 * a).tolist()) == pytest.approx(
        -1.0
    )
    assert q(con, "select cka_bytes(NULL, $1, 1.0, 1.0)", blob) is None
    assert metrics_cka_clamped()


def metrics_cka_clamped() -> bool:
    """The extraction side's ``metrics.cka`` is clamped alike."""
    import torch

    from layerlake.etl.metrics import cka

    g = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=torch.float64)
    return cka(g, g) <= 1.0 and cka(g, -g) >= -1.0 and cka(g, 2 * g) == pytest.approx(1.0)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_cka_of_a_gram_holding_a_nan_or_an_infinity_is_null_not_clamped_to_one(con, bad):
    # DuckDB orders NaN above every number: a plain clamp (x > 1 -> 1) read a diverged layer as identical
    import torch

    from layerlake.etl.metrics import cka
    from layerlake.warehouse.gram import to_bytes

    a, b = [1.0, bad, 2.0], [1.0, 1.0, 2.0]
    assert q(con, "select cka(?::DOUBLE[], ?::DOUBLE[])", a, b) is None
    assert q(con, "select cka(?::FLOAT[], ?::FLOAT[])", a, a) is None
    assert q(con, "select cka_normed(?::DOUBLE[], ?::DOUBLE[], ?, 2.0)", b, b, bad) is None
    assert q(con, "select cka_bytes(?::BLOB, ?::BLOB, 3.0, 2.4)", to_bytes(a), to_bytes(b)) is None
    assert math.isnan(cka(torch.tensor(a), torch.tensor(b)))


def test_a_gram_past_float32s_range_gives_a_null_cka_not_one(con):
    # independent activations whose float64 Grams are finite but overflow float32 storage (a diverged run)
    from layerlake.warehouse.gram import pack, to_bytes

    rng = np.random.default_rng(5)
    x, y = (rng.normal(size=(16, 8)) * 1e19 for _ in range(2))
    a, b = (pack(centred_gram(m)) for m in (x, y))
    assert np.isfinite(a).all() and not np.isfinite(a.astype(np.float32)).all()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    stored = q(con, "select cka_bytes(?::BLOB, ?::BLOB, ?, ?)", to_bytes(a.astype(np.float32)),
               to_bytes(b.astype(np.float32)), na, nb)  # fmt: skip
    assert stored is None


@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_spectrum_holding_a_nan_or_an_infinity_has_no_rank_softrank_or_power_law_fit(con, bad):
    sv = [3.0, bad, 1.0]
    for sql in (
        "numerical_rank($1, 3, 3, 1e-16)", "condition_number($1, 3, 3, 1e-16)",
        "matrix_entropy($1, 3, 3, 1e-16)", "mp_softrank($1, 3, 3)", "ww_alpha($1)", "ww_xmin($1)",
        "ww_ks($1)", "ww_tail($1)", "alpha_weighted($1)",
    ):  # fmt: skip
        assert q(con, f"select {sql.replace('$1', '?::DOUBLE[]')}", sv) is None, sql
    for sql in ("erank(?::DOUBLE[])", "stable_rank(?::DOUBLE[])", "frobenius_norm(?::DOUBLE[])"):
        value = q(con, f"select {sql}", sv)  # arithmetic measures carry the NaN or infinity, never a number
        assert value is None or not math.isfinite(value), sql


def test_cka_of_zero_gram_is_null(con):
    assert q(con, "select cka([0, 0]::FLOAT[], [1, 2]::FLOAT[])") is None
    assert q(con, "select cka_normed([1, 0]::FLOAT[], [1, 0]::FLOAT[], 1.0, 0.0)") is None
    assert q(con, "select cka(NULL::FLOAT[], [1, 2]::FLOAT[])") is None


def test_every_public_macro_is_defined(con):
    defined = {
        r[0]
        for r in con.execute(
            "select function_name from duckdb_functions() where macro_definition is not null"
        ).fetchall()
    }
    assert set(MACROS) <= defined


def test_schema_doc_is_in_step_with_the_code():
    from pathlib import Path

    from layerlake.warehouse.schema_doc import render

    doc = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
    assert doc.read_text() == render(), (
        "docs/schema.md is stale: run `.venv/bin/python -m layerlake.warehouse.schema_doc > docs/schema.md`"
    )


# -- WeightWatcher's measures, against the weightwatcher package itself (a dev dependency) ----------------


def ww_spectra() -> dict[str, tuple[np.ndarray, int, int]]:
    """(singular values, rows, cols): a random matrix (all bulk), the same with three spikes, a
    heavy-tailed one, and a small one with zeros."""
    rng = np.random.default_rng(4)
    bulk = rng.normal(size=(64, 96))
    spiked = bulk + sum(s * np.outer(rng.normal(size=64), rng.normal(size=96)) for s in (3.0, 2.0, 1.5))
    heavy = rng.standard_t(2.5, size=(48, 48))
    out = {name: (np.linalg.svd(m, compute_uv=False), *m.shape) for name, m in
           (("bulk", bulk), ("spiked", spiked), ("heavy", heavy))}  # fmt: skip
    out["with_zeros"] = (np.concatenate([np.sort(rng.gamma(2.0, 1.0, 30))[::-1], np.zeros(4)]), 34, 40)
    return out  # (WeightWatcher fits fewer than 20 eigenvalues another way: see ww_alpha's description)


WW_SPECTRA = ww_spectra()


@pytest.mark.parametrize("case", sorted(WW_SPECTRA))
def test_weightwatcher_measures_equal_the_weightwatcher_package(con, case):
    ww_powerlaw = pytest.importorskip(
        "weightwatcher.WW_powerlaw", reason="pip install weightwatcher (dev extra)"
    )
    from weightwatcher.RMT_Util import matrix_entropy

    sv, rows, cols = WW_SPECTRA[case]
    evals = sv**2
    fit = ww_powerlaw.WWFit(evals[evals > 1e-5])  # WeightWatcher's default fit (its own power-law code)
    got = con.execute(
        "select ww_alpha($s), ww_xmin($s), ww_tail($s), ww_ks($s), alpha_weighted($s), log_norm($s), "
        "log_spectral_norm($s), matrix_entropy($s, $r, $c, $e)", {"s": sv.tolist(), "r": rows, "c": cols, "e": EPS64}
    ).fetchall()[0]  # fmt: skip
    log_spectral_norm = np.log10(evals.max())  # WeightWatcher's apply_norm_metrics
    want = (fit.alpha, fit.xmin, len(fit.data), fit.D, fit.alpha * log_spectral_norm, np.log10(evals.sum()),
            log_spectral_norm, matrix_entropy(sv, max(rows, cols)))  # fmt: skip
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-12)
    assert got[2] == want[2]
    np.testing.assert_allclose(got[3:7], want[3:7], rtol=1e-12)
    assert got[7] == pytest.approx(want[7], rel=1e-7)  # WeightWatcher adds 1e-10 to each p_i


def np_mp_softrank(sv, rows, cols):
    """Written from WeightWatcher's mp_fit with the bulk's variance as the mean eigenvalue: eigenvalues
    rescaled to mean 1, lambda_+ = (1 + 1/sqrt(Q))^2 with Q = N / M."""
    n, m = max(rows, cols), min(rows, cols)
    evals = sv**2 * m / np.sum(sv**2)
    return min(1.0, (1 + 1 / np.sqrt(n / m)) ** 2 / evals.max())


@pytest.mark.parametrize("case", sorted(WW_SPECTRA))
def test_mp_softrank_is_near_one_for_a_random_matrix_and_small_with_spikes(con, case):
    sv, rows, cols = WW_SPECTRA[case]
    got = q(con, "select mp_softrank($1, $2, $3)", sv.tolist(), rows, cols)
    assert got == pytest.approx(np_mp_softrank(sv, rows, cols), rel=1e-12)
    soft = {
        name: q(con, "select mp_softrank($1, $2, $3)", s.tolist(), r, c)
        for name, (s, r, c) in WW_SPECTRA.items()
    }
    assert soft["bulk"] > 0.9 and soft["spiked"] < 0.5 * soft["bulk"]


def ww_mp_softrank(sv, rows, cols):
    """WeightWatcher's own soft rank (``WeightWatcher.mp_fit``): eigenvalues rescaled to mean 1, the bulk's
    sigma fitted to their density (``RMT_Util.fit_density_with_range``), bulk_max / lambda_max."""
    from weightwatcher.RMT_Util import fit_density_with_range

    q_ratio = max(rows, cols) / min(rows, cols)
    evals = sv**2 * len(sv) / np.sum(sv**2)
    sigma, _ = fit_density_with_range(evals, q_ratio, bw=0.1)
    return (sigma * (1 + 1 / np.sqrt(q_ratio))) ** 2 / evals.max()


def test_mp_softrank_is_larger_than_weightwatchers_where_spikes_carry_the_norm(con):
    """As the macro's description says: WeightWatcher fits the bulk's variance, below the mean eigenvalue
    when spikes carry much of the norm, so its soft rank is the smaller one there; on an all-bulk spectrum
    both are about 1."""
    pytest.importorskip("weightwatcher.RMT_Util", reason="pip install weightwatcher (dev extra)")
    rng = np.random.default_rng(0)
    for rows, cols in ((64, 96), (256, 64), (100, 300)):
        bulk = rng.normal(size=(rows, cols))
        spikes = sum(s * np.outer(rng.normal(size=rows), rng.normal(size=cols)) for s in (3.0, 2.0, 1.5))
        low_rank = 0.3 * bulk + rng.normal(size=(rows, 5)) @ rng.normal(size=(5, cols))
        for m in (bulk + spikes, low_rank):
            sv = np.linalg.svd(m, compute_uv=False)
            ours = q(con, "select mp_softrank($1, $2, $3)", sv.tolist(), rows, cols)
            assert ours > 2 * ww_mp_softrank(sv, rows, cols)
        sv = np.linalg.svd(bulk, compute_uv=False)
        ours = q(con, "select mp_softrank($1, $2, $3)", sv.tolist(), rows, cols)
        assert ours == pytest.approx(1.0) and ww_mp_softrank(sv, rows, cols) == pytest.approx(1.0, abs=0.05)


def test_ww_fit_needs_two_eigenvalues(con):
    assert q(con, "select ww_alpha([2.0])") is None and q(con, "select ww_alpha([0.001, 0.0])") is None
    assert q(con, "select ww_alpha([2.0, 1.0])") is not None


# -- SVCCA and mean CCA from the Grams, against CCA computed from the activations ----------------------


def np_svcca(x: np.ndarray, y: np.ndarray, keep: float | None) -> float:
    """Raghu et al.'s SVCCA written from the activations: SVD of each centred matrix, the fewest leading
    directions holding ``keep`` of the variance (all of them for None), then CCA by covariances:
    rho = singular values of Sxx^(-1/2) Sxy Syy^(-1/2)."""

    def reduced(m):
        m = m - m.mean(axis=0)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        s = s[s > s[0] * 1e-10]
        k = len(s) if keep is None else int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep)) + 1
        return m @ vt[:k].T

    a, b = reduced(x), reduced(y)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    rho = np.linalg.svd(inv_sqrt(a.T @ a) @ (a.T @ b) @ inv_sqrt(b.T @ b), compute_uv=False)
    return float(np.mean(rho[: min(a.shape[1], b.shape[1])]))


def activations(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(48, 6))
    return {
        "x": base @ rng.normal(size=(6, 12)) + 0.05 * rng.normal(size=(48, 12)),  # mostly 6 directions
        "y": base[:, :4] @ rng.normal(size=(4, 9)) + 0.5 * rng.normal(size=(48, 9)),  # shares 4 of them
        "z": rng.normal(size=(48, 10)),  # unrelated
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("pair", [("x", "y"), ("x", "z"), ("y", "z")])
def test_svcca_and_mean_cca_from_grams_equal_cca_of_the_activations(con, seed, pair):
    from layerlake.warehouse.gram import pack

    acts = activations(seed)
    a, b = (acts[p] for p in pair)
    ga, gb = (pack(centred_gram(m)) for m in (a, b))
    got64 = con.execute(
        "select svcca($a, $b), svcca($a, $b, 0.9), mean_cca($a, $b)", {"a": ga.tolist(), "b": gb.tolist()}
    ).fetchall()[0]  # fmt: skip
    want = (np_svcca(a, b, 0.99), np_svcca(a, b, 0.9), np_svcca(a, b, None))
    np.testing.assert_allclose(got64, want, rtol=1e-8)
    stored = {
        "a": ga.astype(np.float32).tolist(),
        "b": gb.astype(np.float32).tolist(),
    }  # as sketches are kept
    got32 = con.execute("select svcca($a::FLOAT[], $b::FLOAT[]), mean_cca($a::FLOAT[], $b::FLOAT[])", stored)
    np.testing.assert_allclose(got32.fetchall()[0], (want[0], want[2]), rtol=1e-4)


def spread_activations(n: int, d: int, spread: float, seed: int, rank: int | None = None) -> np.ndarray:
    """float32 activations (as a forward pass gives them, with a mean) whose centred singular values
    spread log-evenly over ``spread`` decades, of rank ``rank`` (default min(n - 1, d))."""
    rng = np.random.default_rng(seed)
    k = rank or min(n - 1, d)
    u = np.linalg.qr(rng.normal(size=(n, k)) - rng.normal(size=(n, k)).mean(axis=0))[0]
    u = np.linalg.qr(u - u.mean(axis=0))[0]  # centred columns
    v = np.linalg.qr(rng.normal(size=(d, k)))[0]
    return ((u * np.logspace(0, -spread, k)) @ v.T + rng.normal(size=d)).astype(np.float32).astype(np.float64)


def np_mean_cca(x: np.ndarray, y: np.ndarray) -> float:
    """Mean canonical correlation from the activations themselves: orthonormal bases of the centred
    column spaces (SVD, numpy's rank tolerance in float32), the cosines of the principal angles."""

    def basis(m):
        u, s, _ = np.linalg.svd(m - m.mean(axis=0), full_matrices=False)
        return u[:, s > s[0] * max(m.shape) * np.finfo(np.float32).eps]

    qx, qy = basis(x), basis(y)
    return float(np.mean(np.linalg.svd(qx.T @ qy, compute_uv=False)[: min(qx.shape[1], qy.shape[1])]))


@pytest.mark.parametrize(("n", "d"), [(64, 64), (64, 96), (64, 24), (128, 48)])
def test_mean_cca_of_float32_sketches_keeps_every_direction_they_resolve(con, n, d):
    """Activations whose spectra spread over three decades (s_min = 1e-3 s_1, as real sites' do): from
    the stored float32 sketches mean_cca equals the mean CCA of the activations, 1 where both sides span
    every centred direction (d >= n - 1). The old cut (lambda_max * n * eps32) dropped directions: 0.98
    and 0.82 where these give 1 and 0.745."""
    from layerlake.warehouse.gram import pack

    x = spread_activations(n, d, 3.0, seed=n + d)
    y = (0.7 * x @ np.linalg.qr(np.random.default_rng(d).normal(size=(d, d)))[0]
         + 0.3 * spread_activations(n, d, 3.0, seed=n * d)).astype(np.float32).astype(np.float64)  # fmt: skip
    stored = [pack(centred_gram(m)).astype(np.float32).tolist() for m in (x, y)]
    got = q(con, "select mean_cca($1::FLOAT[], $2::FLOAT[])", *stored)
    want = np_mean_cca(x, y)
    if d >= n - 1:
        assert want == pytest.approx(1.0, abs=1e-9)
    assert got == pytest.approx(want, abs=1e-3)


def test_mean_cca_drops_the_directions_a_sketch_does_not_have():
    """A rank-r side keeps r directions: the centring's and the n - 1 - r missing ones, zero but for
    float32 rounding, are not counted."""
    from layerlake.warehouse.gram import pack
    from layerlake.warehouse.similarity import kept_directions

    for rank in (1, 10, 23):
        x = spread_activations(64, 24, 3.0, seed=rank, rank=rank)
        packed = pack(centred_gram(x)).astype(np.float32).astype(np.float64)
        assert kept_directions(packed, 64, 1.0).shape == (64, rank)


def test_svcca_is_one_for_a_rotated_copy_and_null_for_a_mismatch(con):
    from layerlake.warehouse.gram import pack

    x = activations(3)["x"]
    rotation = np.linalg.qr(np.random.default_rng(5).normal(size=(12, 12)))[0]
    ga, gb = pack(centred_gram(x)).tolist(), pack(centred_gram(2.0 * x @ rotation)).tolist()
    assert q(con, "select svcca($1, $2)", ga, gb) == pytest.approx(1.0, abs=1e-9)
    assert q(con, "select mean_cca($1, $2)", ga, ga[:-1]) is None
    assert q(con, "select svcca($1, $2)", ga, [0.0] * len(ga)) is None


# -- PWCCA of stored activations, against CCA by covariances --------------------------------------------


def np_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al.'s PWCCA written with covariances: whiten each centred side (its column space only),
    canonical directions from the SVD of Sxx^(-1/2) Sxy Syy^(-1/2), canonical variates h_i = X w_i
    normalised, weights alpha_i = sum_j |<h_i, x_j>| on the side with fewer features."""

    def whitener(m):
        w, v = np.linalg.eigh(m.T @ m)
        keep = w > w.max() * 1e-9
        return v[:, keep] @ np.diag(w[keep] ** -0.5)  # d x r: m @ this has orthonormal columns

    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    wx, wy = whitener(xc), whitener(yc)
    u, rho, vt = np.linalg.svd((xc @ wx).T @ (yc @ wy), full_matrices=False)
    c = min(wx.shape[1], wy.shape[1])
    h = (xc @ wx @ u[:, :c]) if x.shape[1] <= y.shape[1] else (yc @ wy @ vt.T[:, :c])
    h = h / np.linalg.norm(h, axis=0)
    features = xc if x.shape[1] <= y.shape[1] else yc
    alpha = np.abs(h.T @ features).sum(axis=1)
    return float((alpha * rho[:c]).sum() / alpha.sum())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pair", [("x", "y"), ("y", "x"), ("x", "z")])
def test_pwcca_of_stored_activations_equals_cca_by_covariances(con, seed, pair):
    acts = {k: v.astype("<f2") for k, v in activations(seed).items()}  # stored as float16
    a, b = (acts[p] for p in pair)
    got = q(con, "select pwcca($1, $2, $3, $4)", a.tobytes(), a.shape[1], b.tobytes(), b.shape[1])
    assert got == pytest.approx(np_pwcca(a.astype(float), b.astype(float)), rel=1e-6)


def test_pwcca_is_one_for_a_linear_map_and_null_for_a_mismatch(con):
    x = activations(4)["x"]
    y = x @ np.random.default_rng(2).normal(size=(12, 12))
    a, b = x.astype("<f2"), y.astype("<f2")
    assert q(con, "select pwcca($1, 12, $2, 12)", a.tobytes(), b.tobytes()) == pytest.approx(1.0, abs=2e-3)
    assert q(con, "select pwcca($1, 12, $2, 12)", a.tobytes(), b[:10].tobytes()) is None  # other rows
    assert q(con, "select pwcca($1, 5, $2, 12)", a.tobytes(), b.tobytes()) is None  # not n x 5


def test_each_macro_declares_the_macros_it_calls():
    """`-- uses:` orders the CREATE statements; a call it leaves out works only while the names happen to
    sort well (adding `_ll_ww` once put `_ll_ww_fit` before the `_ll_ww_alpha_at` it calls)."""
    import re

    from layerlake.warehouse.macros import MACROS

    names = set(MACROS.names())
    for item in MACROS.all():
        body = item.body.split(" AS", 1)[1]  # after CREATE OR REPLACE MACRO name(args)
        called = {n for n in names if n != item.name and re.search(rf"\b{n}\s*\(", body)}
        assert called == {u for u in item.uses if u in names}, (item.name, sorted(called), item.uses)


def test_ww_fit_is_null_without_a_tail_and_the_same_scanned_in_any_blocks(con, monkeypatch):
    from layerlake.warehouse import powerlaw

    for sv in ([], [1.0], [1e-4, 2.0], [3.0, 3.0, 3.0]):  # < 2 eigenvalues above 1e-5, or a flat tail
        for macro in ("ww_alpha", "ww_xmin", "ww_ks", "ww_tail", "alpha_weighted"):  # no fit, no part of one
            assert q(con, f"select {macro}(?::DOUBLE[])", sv) is None, (macro, sv)
    eig = np.sort(np.random.default_rng(7).pareto(2.0, size=300) + 1)
    whole = powerlaw.ww_fit(eig)
    monkeypatch.setattr(powerlaw, "BLOCK_VALUES", 1000)  # 3 candidates a block
    assert powerlaw.ww_fit(eig) == whole
