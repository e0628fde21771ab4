-- name: non_finite
-- description: NaN or infinite values in statistics, singular values or Gram matrices (not in scalars: a logged NaN loss is kept as it was logged, a fact about the run)
-- grain: one row per offending row; zero rows means the audit passes
SELECT 'activation_stats' AS table_name, suite, model, run_id, step, layer, site AS what, head
FROM activation_stats
WHERE NOT (isfinite(mean_norm) AND isfinite(rms) AND isfinite(std) AND isfinite(max_abs)
           AND isfinite(kurtosis) AND isfinite(frac_near_zero))
   OR list_bool_or(list_transform(sv, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'spectra', suite, model, run_id, step, layer, tensor || ':' || matrix, head
FROM spectra
WHERE list_bool_or(list_transform(sv, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'sketches', suite, model, run_id, step, layer, site || ':' || kernel || ':' || estimator, head
FROM sketches
WHERE NOT isfinite(gram_norm) OR list_bool_or(list_transform(gram, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'imported_metrics', suite, model, run_id, step, layer, site || ':' || metric, NULL
FROM imported_metrics
WHERE NOT isfinite(value)
ORDER BY ALL;
