-- name: cka
-- signature: cka(a, b)
-- description: linear CKA of two stored centred Gram matrices (packed, same probe):
--        cka = <A, B> / sqrt(<A, A> <B, B>), with <A, B> = list_dot_product(a, b).
--    With A = H K H (biased centring) this is the biased HSIC estimator of Kornblith et al. (2019); with
--    U-centred Grams (zero diagonal, Szekely-Rizzo) the debiased one: the estimator is whatever the two arrays
--    hold (the `estimator` column). Lists are promoted to DOUBLE so sums accumulate in float64. NULL when
--    either Gram is zero or NULL.
CREATE OR REPLACE MACRO cka(a, b) AS
    list_dot_product(a::DOUBLE[], b::DOUBLE[])
    / nullif(sqrt(list_dot_product(a::DOUBLE[], a::DOUBLE[]) * list_dot_product(b::DOUBLE[], b::DOUBLE[])), 0);
