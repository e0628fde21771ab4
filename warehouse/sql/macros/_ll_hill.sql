-- name: _ll_hill
-- signature: _ll_hill(tail)
-- description: internal: the continuous Hill estimator 1 + k / sum_i ln(x_i / x_min) of a tail of k values (see powerlaw_alpha).
CREATE OR REPLACE MACRO _ll_hill(tail) AS
    CASE WHEN len(tail) > 0 THEN
        1 + len(tail) / nullif(
            list_sum(list_transform(tail, lambda x: ln(x))) - len(tail) * ln(list_min(tail)), 0)
    END;
