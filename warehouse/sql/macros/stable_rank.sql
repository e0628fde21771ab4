-- name: stable_rank
-- signature: stable_rank(sv)
-- description: sum_i s_i^2 / max_i s_i^2 (= ||W||_F^2 / ||W||_2^2). NULL when all values are 0.
CREATE OR REPLACE MACRO stable_rank(sv) AS
    list_dot_product(sv::DOUBLE[], sv::DOUBLE[]) / nullif(list_max(sv::DOUBLE[]) ^ 2, 0);
