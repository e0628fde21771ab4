-- name: cka_normed
-- signature: cka_normed(a, b, na, nb)
-- description: the same CKA using the stored Frobenius norms (gram_norm = sqrt(<A, A>)):
--        cka = <A, B> / (na * nb)
--    one dot product per pair instead of three. NULL when a norm is 0 or NULL, or a Gram or norm holds a
--    NaN or an infinity. Clamped to [-1, 1] as cka.
-- uses: _ll_unit
CREATE OR REPLACE MACRO cka_normed(a, b, na, nb) AS
    CASE WHEN isfinite(na) AND isfinite(nb) THEN
        _ll_unit(list_dot_product(a::DOUBLE[], b::DOUBLE[]) / nullif(na::DOUBLE * nb::DOUBLE, 0)) END;
