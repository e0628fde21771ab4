-- name: _ll_pos
-- signature: _ll_pos(sv)
-- description: internal: the strictly positive values of a spectrum, as DOUBLE.
CREATE OR REPLACE MACRO _ll_pos(sv) AS list_filter(sv::DOUBLE[], lambda x: x > 0);
