-- name: cka_bytes
-- signature: cka_bytes(a, b, na, nb)
-- description: cka_normed on the stored bytes of two Grams (sketches.gram_bytes, little-endian float32):
--        cka = <A, B> / (na * nb)
--    every product and the sum in float64 (numpy). What the recipes use: the bytes are read as stored
--    (a full scan of every Gram of the query benchmark's full-study warehouse in 0.3 s, against 2.8 s
--    for the same Grams as lists). NULL when a norm is 0 or NULL, or the two sizes differ.
CREATE OR REPLACE MACRO cka_bytes(a, b, na, nb) AS
    _ll_gram_dot(a, b) / nullif(na::DOUBLE * nb::DOUBLE, 0);
