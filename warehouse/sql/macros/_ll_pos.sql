-- name: _ll_pos
-- signature: _ll_pos(sv)
-- description: internal: the strictly positive values of a spectrum, as DOUBLE. A spectrum with no zero,
--    negative or NULL value (every stored spectrum of a full-rank matrix) is returned as it is, without the
--    per-element filter: list_min and list_count are native, a lambda is not (erank over the 30,184
--    spectra of the full-study warehouse: 1.45 -> 1.07 s).
CREATE OR REPLACE MACRO _ll_pos(sv) AS
    CASE WHEN list_min(sv) > 0 AND list_count(sv) = len(sv) THEN sv::DOUBLE[]
        ELSE list_filter(sv::DOUBLE[], lambda x: x > 0) END;
