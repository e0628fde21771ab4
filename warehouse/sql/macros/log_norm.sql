-- name: log_norm
-- signature: log_norm(sv)
-- description: WeightWatcher's log_norm: log10(sum_i s_i^2) = log10 ||W||_F^2. NULL for an all-zero spectrum.
CREATE OR REPLACE MACRO log_norm(sv) AS
    log10(nullif(list_sum(list_transform(sv::DOUBLE[], lambda x: x * x)), 0));
