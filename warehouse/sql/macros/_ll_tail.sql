-- name: _ll_tail
-- signature: _ll_tail(eig)
-- description: internal: the largest floor(m / 2) of m values, descending (the fixed tail of powerlaw_alpha).
CREATE OR REPLACE MACRO _ll_tail(eig) AS list_slice(list_reverse_sort(eig), 1, len(eig) // 2);
