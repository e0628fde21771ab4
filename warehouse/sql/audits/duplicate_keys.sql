-- name: duplicate_keys
-- description: a key (warehouse/schema.py `key` of each table) stored more than once anywhere in the warehouse, whatever suite and model folders hold the copies
-- grain: one row per repeated key (suite and model list every folder holding a copy); zero rows means the audit passes
SELECT 'runs' AS table_name, string_agg(DISTINCT suite, ',' ORDER BY suite) AS suite,
       string_agg(DISTINCT model, ',' ORDER BY model) AS model, run_id, run_id AS key, count(*) AS copies
FROM runs GROUP BY run_id HAVING count(*) > 1
UNION ALL
SELECT 'scalars', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, concat_ws(' ', step, name, coalesce(rank::VARCHAR, '-')), count(*)
FROM scalars GROUP BY run_id, step, name, rank HAVING count(*) > 1
UNION ALL
SELECT 'run_tags', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, key, count(*)
FROM run_tags GROUP BY run_id, key HAVING count(*) > 1
UNION ALL
SELECT 'run_notes', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, strftime(noted_at, '%Y-%m-%dT%H:%M:%S.%fZ'), count(*)
FROM run_notes GROUP BY run_id, noted_at HAVING count(*) > 1
UNION ALL
SELECT 'checkpoints', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, revision || ' ' || probe_id, count(*)
FROM checkpoints GROUP BY run_id, revision, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'probes', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, probe_id, count(*)
FROM probes GROUP BY run_id, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'activation_stats', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id), count(*)
FROM activation_stats
GROUP BY run_id, step, weights_sha256, layer, site, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'sketches', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id, kernel, estimator),
       count(*)
FROM sketches
GROUP BY run_id, step, weights_sha256, layer, site, head, probe_id, kernel, estimator HAVING count(*) > 1
UNION ALL
SELECT 'spectra', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, tensor, matrix, coalesce(head::VARCHAR, '-'),
                 coalesce(probe_id, '-')), count(*)
FROM spectra
GROUP BY run_id, step, weights_sha256, layer, tensor, matrix, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'matrix_stats', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id,
       concat_ws(' ', step, weights_sha256[:12], layer, tensor, matrix, coalesce(head::VARCHAR, '-'),
                 coalesce(probe_id, '-')), count(*)
FROM matrix_stats
GROUP BY run_id, step, weights_sha256, layer, tensor, matrix, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'activations', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, concat_ws(' ', step, weights_sha256[:12], layer, site, probe_id), count(*)
FROM activations
GROUP BY run_id, step, weights_sha256, layer, site, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'imported_metrics', string_agg(DISTINCT suite, ',' ORDER BY suite), string_agg(DISTINCT model, ',' ORDER BY model),
       run_id, concat_ws(' ', source, step, layer, site, metric), count(*)
FROM imported_metrics
GROUP BY run_id, source, step, layer, site, metric HAVING count(*) > 1
ORDER BY ALL;
