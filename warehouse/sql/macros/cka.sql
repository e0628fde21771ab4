-- name: cka
-- signature: cka(a, b)
-- description: linear CKA of two stored centred Gram matrices (packed, same probe):
--        cka = <A, B> / sqrt(<A, A> <B, B>), with <A, B> = list_dot_product(a, b).
--    With A = H K H (biased centring) this is the biased HSIC estimator of Kornblith et al. (2019); with
--    U-centred Grams (zero diagonal, Szekely-Rizzo) the debiased one: the estimator is whatever the two arrays
--    hold (the `estimator` column). Lists are promoted to DOUBLE so sums accumulate in float64. NULL when
--    either Gram is zero or NULL, or holds a NaN or an infinity.
--    Clamped to [-1, 1] (_ll_unit): Cauchy-Schwarz bounds it there, and what lies beyond is the rounding of
--    the sums, e.g. a self-CKA of 1.0000000000000002; not clamped at 0, where the debiased estimator goes
--    below for unrelated activations (and float32 rounding can put a biased CKA near 0 a hair under it).
-- uses: _ll_unit
CREATE OR REPLACE MACRO cka(a, b) AS _ll_unit(
    list_dot_product(a::DOUBLE[], b::DOUBLE[])
    / nullif(sqrt(list_dot_product(a::DOUBLE[], a::DOUBLE[]) * list_dot_product(b::DOUBLE[], b::DOUBLE[])), 0));
