-- name: matrix_entropy
-- signature: matrix_entropy(sv, rows, cols)
-- description: WeightWatcher's matrix entropy: the Shannon entropy of p_i = s_i^2 / sum_j s_j^2,
--    divided by ln of the numerical rank (numerical_rank(sv, rows, cols)):
--        matrix_entropy = -sum_i p_i ln p_i / ln(rank)
--    1 for a flat spectrum, near 0 when one direction dominates. NULL when the rank is below 2.
-- uses: numerical_rank
CREATE OR REPLACE MACRO matrix_entropy(sv, rows, cols) AS
    -list_sum(list_transform(
        list_filter(sv::DOUBLE[], lambda x: x > 0),
        lambda x: (x * x / list_sum(list_transform(sv::DOUBLE[], lambda y: y * y)))
            * ln(x * x / list_sum(list_transform(sv::DOUBLE[], lambda y: y * y)))))
    / nullif(ln(greatest(numerical_rank(sv, rows, cols), 1)), 0);
