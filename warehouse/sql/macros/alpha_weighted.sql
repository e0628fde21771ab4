-- name: alpha_weighted
-- signature: alpha_weighted(sv)
-- description: WeightWatcher's alpha-hat: ww_alpha(sv) * log10(lambda_max), lambda_max = max s^2 (the
--    spectral norm squared): alpha scaled by the matrix's size, comparable across depths.
-- uses: ww_alpha, log_spectral_norm
CREATE OR REPLACE MACRO alpha_weighted(sv) AS ww_alpha(sv) * log_spectral_norm(sv);
