-- name: ww_tail
-- signature: ww_tail(sv)
-- description: how many eigenvalues (lambda = s^2 above 1e-5) lie in ww_alpha's fitted power-law tail.
-- uses: _ll_ww
CREATE OR REPLACE MACRO ww_tail(sv) AS _ll_ww(sv)[5]::BIGINT;
