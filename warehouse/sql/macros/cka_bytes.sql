-- name: cka_bytes
-- signature: cka_bytes(a, b, na, nb)
-- description: cka_normed on the stored bytes of two Grams (sketches.gram_bytes, little-endian float32):
--        cka = <A, B> / (na * nb)
--    every product and the sum in float64 (numpy). What the recipes use: the bytes are read as stored
--    (a full scan of every Gram of the query benchmark's full-study warehouse in 0.3 s, against 2.8 s
--    for the same Grams as lists). NULL when a norm is 0 or NULL, or the two sizes differ,
--    or a Gram or norm holds a NaN or an infinity.
--    Clamped to [-1, 1] (_ll_unit): Cauchy-Schwarz bounds it there, and what lies beyond is the rounding of
--    the sums, e.g. a self-CKA of 1.0000000000000002; not clamped at 0, where the debiased estimator goes
--    below for unrelated activations (and float32 rounding can put a biased CKA near 0 a hair under it).
-- uses: _ll_unit
CREATE OR REPLACE MACRO cka_bytes(a, b, na, nb) AS
    CASE WHEN isfinite(na) AND isfinite(nb) THEN _ll_unit(_ll_gram_dot(a, b) / nullif(na::DOUBLE * nb::DOUBLE, 0)) END;
