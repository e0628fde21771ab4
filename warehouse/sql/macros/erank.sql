-- name: erank
-- signature: erank(sv)
-- description: effective rank of Roy & Vetterli (2007):
--        p_i = s_i / S, S = sum_i s_i (zeros dropped);   erank = exp(-sum_i p_i ln p_i)
--    computed as exp(ln S - (sum_i s_i ln s_i) / S), the same quantity in one pass. 1 for a single nonzero
--    value, k for k equal values. NULL for an empty, all-zero or NULL spectrum. The test for a spectrum
--    with nothing to drop is made once here: _ll_erank reads its list four times.
-- uses: _ll_pos, _ll_erank
CREATE OR REPLACE MACRO erank(sv) AS
    CASE WHEN list_min(sv) > 0 AND list_count(sv) = len(sv) THEN _ll_erank(sv::DOUBLE[])
        ELSE _ll_erank(_ll_pos(sv)) END;
