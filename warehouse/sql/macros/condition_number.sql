-- name: condition_number
-- signature: condition_number(sv, rows, cols)
-- description: the condition number of a rows x cols matrix restricted to its numerical rank r:
--        condition_number = s_1 / s_r,   s_1 >= ... >= s_r the values above tol = s_1 * max(rows, cols) * eps,
--    eps = 2^-52 (float64; see numerical_rank). Values at or below tol are rounding noise of a rank-deficient
--    matrix (dividing by them gave ~1e16), so they are ignored; a full-rank matrix gets numpy.linalg.cond's
--    s_max / s_min. Pass (sv, rows, cols) for spectra and (sv, n, d) for activation_stats. NULL for an
--    empty, all-zero or NULL spectrum, or a NULL shape.
-- uses: _ll_significant
CREATE OR REPLACE MACRO condition_number(sv, rows, cols) AS
    list_max(_ll_significant(sv, rows, cols)) / list_min(_ll_significant(sv, rows, cols));
