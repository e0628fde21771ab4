-- name: _ll_ww_eig
-- signature: _ll_ww_eig(sv)
-- description: the eigenvalues WeightWatcher fits: lambda = s^2 above its threshold 1e-5, ascending.
CREATE OR REPLACE MACRO _ll_ww_eig(sv) AS
    list_sort(list_filter(list_transform(sv::DOUBLE[], lambda x: x * x), lambda x: x > 1e-5));
