-- name: _ll_significant
-- signature: _ll_significant(sv, rows, cols)
-- description: internal: the singular values of a rows x cols matrix that are numerically nonzero,
--        s_i > tol,   tol = max_j s_j * max(rows, cols) * eps,   eps = 2^-52 = 2.220446049250313e-16
--    (numpy.linalg.matrix_rank's default tolerance, with float64's eps because every stored spectrum is a
--    float64 SVD); the values at or below tol are rounding noise of a rank-deficient matrix. NULL when sv,
--    rows or cols is NULL. When every value is above tol and none is NULL (a full-rank matrix) the list is
--    returned whole, without the per-element filter (numerical_rank over the 30,184 spectra of the
--    full-study warehouse: 1.62 -> 0.53 s).
-- uses: _ll_above
CREATE OR REPLACE MACRO _ll_significant(sv, rows, cols) AS
    CASE WHEN sv IS NULL OR rows IS NULL OR cols IS NULL THEN NULL
        WHEN list_min(sv) > list_max(sv::DOUBLE[]) * greatest(rows, cols)::DOUBLE * 2.220446049250313e-16
            AND list_count(sv) = len(sv) THEN sv::DOUBLE[]
        ELSE _ll_above(sv, list_max(sv::DOUBLE[]) * greatest(rows, cols)::DOUBLE * 2.220446049250313e-16)
    END;
