-- name: condition_number
-- signature: condition_number(sv, rows, cols, eps)
-- description: the condition number of a rows x cols matrix restricted to its numerical rank r:
--        condition_number = s_1 / s_r,   s_1 >= ... >= s_r the values above tol = s_1 * max(rows, cols) * eps,
--    eps the precision the values were computed in (see numerical_rank; pass the stored eps column).
--    Values at or below tol are that arithmetic's rounding in a rank-deficient matrix (dividing by them gave
--    1e10 for float32 gradients and 1e16 for float64), so they are ignored; a full-rank matrix gets
--    numpy.linalg.cond's s_max / s_min. Pass (sv, rows, cols, eps) for spectra and (sv, n, d, eps) for
--    activation_stats. NULL for an empty, all-zero or NULL spectrum, one holding a NaN or an
--    infinity, or a NULL shape or eps.
-- uses: _ll_significant
CREATE OR REPLACE MACRO condition_number(sv, rows, cols, eps) AS
    list_max(_ll_significant(sv, rows, cols, eps)) / list_min(_ll_significant(sv, rows, cols, eps));
