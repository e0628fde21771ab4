-- name: _ll_unit
-- signature: _ll_unit(x)
-- description: internal: x clamped to [-1, 1], NULL kept (DuckDB's least and greatest skip NULLs, so
--    they would turn a NULL into a bound), NULL for NaN and infinities (DuckDB orders NaN above every
--    number, so a plain clamp would turn it into 1: a diverged layer's Gram, NaN or past float32's range,
--    would read as perfectly similar). What the CKA macros return: by Cauchy-Schwarz |<A, B>| <= |A| |B|,
--    so a value beyond 1 in size is the rounding of the sums (a self-CKA of 1.0000000000000002).
--    DuckDB evaluates x once (common subexpressions are shared), not once per branch.
CREATE OR REPLACE MACRO _ll_unit(x) AS
    CASE WHEN NOT isfinite(x) THEN NULL WHEN x > 1 THEN 1.0::DOUBLE WHEN x < -1 THEN -1.0::DOUBLE
        ELSE x::DOUBLE END;
