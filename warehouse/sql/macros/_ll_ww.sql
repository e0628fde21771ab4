-- name: _ll_ww
-- signature: _ll_ww(sv)
-- description: internal: WeightWatcher's power-law fit of the eigenvalues of sv, [D, i, alpha, x_min, m]:
--    _ll_ww_fit (a Python function, warehouse/powerlaw.py, where the formulas are) on _ll_ww_eig(sv).
--    Every eigenvalue but the largest is tried as x_min; the tail above it gets the continuous MLE alpha
--    and the Kolmogorov-Smirnov distance D to the fitted power law; the smallest D wins.
-- uses: _ll_ww_eig
CREATE OR REPLACE MACRO _ll_ww(sv) AS _ll_ww_fit(_ll_ww_eig(sv));
