-- name: unsorted_spectra
-- description: singular values not stored in descending order (activation_stats.sv, spectra.sv)
-- grain: one row per offending row; zero rows means the audit passes
SELECT 'spectra' AS table_name, suite, model, run_id, step, layer, tensor || ':' || matrix AS what, head, len(sv) AS n_values
FROM spectra
WHERE sv <> list_reverse_sort(sv)
UNION ALL
SELECT 'activation_stats', suite, model, run_id, step, layer, site, head, len(sv)
FROM activation_stats
WHERE sv <> list_reverse_sort(sv)
ORDER BY ALL;
