-- name: duplicate_keys
-- description: a key (warehouse/schema.py `key` of each table) stored more than once
-- grain: one row per offending row; zero rows means the audit passes
SELECT 'checkpoints' AS table_name, suite, model, run_id, revision || ' ' || probe_id AS key, count(*) AS copies
FROM checkpoints GROUP BY suite, model, run_id, revision, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'probes', suite, model, run_id, probe_id, count(*)
FROM probes GROUP BY suite, model, run_id, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'activation_stats', suite, model, run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id), count(*)
FROM activation_stats
GROUP BY suite, model, run_id, step, weights_sha256, layer, site, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'sketches', suite, model, run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id, kernel, estimator),
       count(*)
FROM sketches
GROUP BY suite, model, run_id, step, weights_sha256, layer, site, head, probe_id, kernel, estimator HAVING count(*) > 1
UNION ALL
SELECT 'spectra', suite, model, run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, tensor, matrix, coalesce(head::VARCHAR, '-'),
                 coalesce(probe_id, '-')), count(*)
FROM spectra
GROUP BY suite, model, run_id, step, weights_sha256, layer, tensor, matrix, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'imported_metrics', suite, model, run_id, concat_ws(' ', source, step, layer, site, metric), count(*)
FROM imported_metrics
GROUP BY suite, model, run_id, source, step, layer, site, metric HAVING count(*) > 1
ORDER BY ALL;
