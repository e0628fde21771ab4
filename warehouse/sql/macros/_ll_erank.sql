-- name: _ll_erank
-- signature: _ll_erank(pos)
-- description: internal: the effective rank of a list of positive values (see erank), written once so the lambda does not re-evaluate it.
CREATE OR REPLACE MACRO _ll_erank(pos) AS
    CASE WHEN len(pos) > 0 THEN
        exp(ln(list_sum(pos)) - list_sum(list_transform(pos, lambda x: x * ln(x))) / list_sum(pos))
    END;
