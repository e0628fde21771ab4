-- name: _ll_above
-- signature: _ll_above(sv, tol)
-- description: internal: the values of sv strictly above tol, as DOUBLE, in their order. tol is evaluated
--    once per list, outside any lambda: DuckDB re-evaluates an outer expression inside a lambda for every
--    element (list_filter(sv, lambda x: x > list_max(sv) * c) costs O(m^2)), so tol is zipped in as a
--    list of copies. Empty when tol is NULL.
CREATE OR REPLACE MACRO _ll_above(sv, tol) AS
    list_transform(
        list_filter(list_zip(sv::DOUBLE[], list_resize([]::DOUBLE[], len(sv), tol)), lambda p: p[1] > p[2]),
        lambda p: p[1]);
