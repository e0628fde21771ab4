-- name: mean_cca
-- signature: mean_cca(a, b)
-- description: the mean canonical correlation between two sites' centred activations over every
--    direction they span (svcca with nothing dropped: eigenvalues above lambda_max * n * float32 eps).
--    Meaningful for sites narrower than the probe (d < n - 1): otherwise both span every centred
--    direction of the n rows and it is 1. NULL for a NULL, all-zero or mismatched pair. At most n = 4,096
--    probe rows, as svcca.
CREATE OR REPLACE MACRO mean_cca(a, b) AS _ll_svcca(a::DOUBLE[], b::DOUBLE[], 1.0);
