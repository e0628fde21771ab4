-- name: log_spectral_norm
-- signature: log_spectral_norm(sv)
-- description: WeightWatcher's log_spectral_norm: log10(max_i s_i^2) = log10 ||W||_2^2. NULL when all
--    values are 0.
CREATE OR REPLACE MACRO log_spectral_norm(sv) AS log10(nullif(list_max(sv::DOUBLE[]) ^ 2, 0));
