-- name: ww_xmin
-- signature: ww_xmin(sv)
-- description: the x_min (an eigenvalue lambda = s^2) of ww_alpha's fit: where the power-law tail starts.
-- uses: _ll_ww
CREATE OR REPLACE MACRO ww_xmin(sv) AS _ll_ww(sv)[4];
