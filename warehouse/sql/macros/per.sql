-- name: per
-- signature: per(sv, k)
-- description: proportional effective rank, erank(sv) / k. The paper divides by k = head dimension for
--    every matrix; pass the k you mean (d_head, rank, least(rows, cols)). NULL when k is 0 or NULL.
-- uses: erank
CREATE OR REPLACE MACRO per(sv, k) AS erank(sv) / nullif(k::DOUBLE, 0);
