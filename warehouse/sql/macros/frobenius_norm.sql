-- name: frobenius_norm
-- signature: frobenius_norm(sv)
-- description: sqrt(sum_i s_i^2) (= ||W||_F). NULL for an empty spectrum.
CREATE OR REPLACE MACRO frobenius_norm(sv) AS sqrt(list_sum(list_transform(sv::DOUBLE[], lambda x: x * x)));
