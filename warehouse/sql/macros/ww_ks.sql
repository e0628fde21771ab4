-- name: ww_ks
-- signature: ww_ks(sv)
-- description: the Kolmogorov-Smirnov distance D of ww_alpha's fit to its tail (smaller: a closer power law).
-- uses: _ll_ww
CREATE OR REPLACE MACRO ww_ks(sv) AS _ll_ww(sv)[1];
