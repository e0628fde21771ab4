-- name: _ll_entropy
-- signature: _ll_entropy(pos)
-- description: internal: the Shannon entropy of p_i = x_i / S, S = sum_i x_i, for a list of positive
--    values x, as ln S - (sum_i x_i ln x_i) / S (one pass). sum_i x_i ln x_i is list_dot_product(x, ln x):
--    the lambda does one ln per element, the products and the sum are native. NULL for an empty list.
CREATE OR REPLACE MACRO _ll_entropy(pos) AS
    CASE WHEN len(pos) > 0 THEN
        ln(list_sum(pos)) - list_dot_product(pos, list_transform(pos, lambda x: ln(x))) / list_sum(pos)
    END;
