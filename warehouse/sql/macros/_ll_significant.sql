-- name: _ll_significant
-- signature: _ll_significant(sv, rows, cols)
-- description: internal: the singular values of a rows x cols matrix that are numerically nonzero,
--        s_i > tol,   tol = max_j s_j * max(rows, cols) * eps,   eps = 2^-52 = 2.220446049250313e-16
--    (numpy.linalg.matrix_rank's default tolerance, with float64's eps because every stored spectrum is a
--    float64 SVD); the values at or below tol are rounding noise of a rank-deficient matrix. NULL when sv,
--    rows or cols is NULL.
-- uses: _ll_above
CREATE OR REPLACE MACRO _ll_significant(sv, rows, cols) AS
    CASE WHEN sv IS NOT NULL AND rows IS NOT NULL AND cols IS NOT NULL THEN
        _ll_above(sv, list_max(sv::DOUBLE[]) * greatest(rows, cols)::DOUBLE * 2.220446049250313e-16)
    END;
