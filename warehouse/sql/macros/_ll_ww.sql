-- name: _ll_ww
-- signature: _ll_ww(sv)
-- description: internal: WeightWatcher's fit of the eigenvalues of sv, [D, i, alpha, x_min, m]
--    (_ll_ww_fit of _ll_ww_eig(sv)). The eigenvalues are computed once and handed to the fit as a lambda's
--    argument: passed as a macro argument they stay an expression, which DuckDB evaluated again (squares,
--    filter and sort) inside every lambda of the fit: 565 -> 18 ms for one spectrum of 512 values.
-- uses: _ll_ww_eig, _ll_ww_fit
CREATE OR REPLACE MACRO _ll_ww(sv) AS list_transform([_ll_ww_eig(sv)], lambda eig: _ll_ww_fit(eig))[1];
