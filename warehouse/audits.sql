-- layerlake audits: each query returns the offending rows; zero rows means the audit passes.
-- `layerlake check` runs every query below (a `-- name:` line starts one, `-- doc:` says what it finds).

-- name: unsorted_spectra
-- doc: singular values not stored in descending order (activation_stats.sv, spectra.sv)
SELECT 'spectra' AS table_name, suite, model, step, layer, tensor || ':' || matrix AS what, head, len(sv) AS n_values
FROM spectra
WHERE sv <> list_reverse_sort(sv)
UNION ALL
SELECT 'activation_stats', suite, model, step, layer, site, head, len(sv)
FROM activation_stats
WHERE sv <> list_reverse_sort(sv)
ORDER BY ALL;

-- name: non_finite
-- doc: NaN or infinite values in statistics, singular values or Gram matrices
SELECT 'activation_stats' AS table_name, suite, model, step, layer, site AS what, head
FROM activation_stats
WHERE NOT (isfinite(mean_norm) AND isfinite(rms) AND isfinite(std) AND isfinite(max_abs)
           AND isfinite(kurtosis) AND isfinite(frac_near_zero))
   OR list_bool_or(list_transform(sv, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'spectra', suite, model, step, layer, tensor || ':' || matrix, head
FROM spectra
WHERE list_bool_or(list_transform(sv, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'sketches', suite, model, step, layer, site || ':' || kernel || ':' || estimator, head
FROM sketches
WHERE NOT isfinite(gram_norm) OR list_bool_or(list_transform(gram, lambda x: NOT isfinite(x)))
UNION ALL
SELECT 'imported_metrics', suite, model, step, layer, site || ':' || metric, NULL
FROM imported_metrics
WHERE NOT isfinite(value)
ORDER BY ALL;

-- name: duplicate_keys
-- doc: a key (warehouse/schema.py `key` of each table) stored more than once
SELECT 'checkpoints' AS table_name, suite, model, revision || ' ' || probe_id AS key, count(*) AS copies
FROM checkpoints GROUP BY suite, model, revision, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'probes', suite, model, probe_id, count(*)
FROM probes GROUP BY suite, model, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'activation_stats', suite, model,
       concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id), count(*)
FROM activation_stats
GROUP BY suite, model, step, weights_sha256, layer, site, head, probe_id HAVING count(*) > 1
UNION ALL
SELECT 'sketches', suite, model,
       concat_ws(' ', step, weights_sha256[:12], layer, site, coalesce(head::VARCHAR, '-'), probe_id, kernel, estimator),
       count(*)
FROM sketches
GROUP BY suite, model, step, weights_sha256, layer, site, head, probe_id, kernel, estimator HAVING count(*) > 1
UNION ALL
SELECT 'spectra', suite, model,
       concat_ws(' ', step, weights_sha256[:12], layer, tensor, matrix, coalesce(head::VARCHAR, '-')), count(*)
FROM spectra
GROUP BY suite, model, step, weights_sha256, layer, tensor, matrix, head HAVING count(*) > 1
UNION ALL
SELECT 'imported_metrics', suite, model, concat_ws(' ', source, step, layer, site, metric), count(*)
FROM imported_metrics
GROUP BY suite, model, source, step, layer, site, metric HAVING count(*) > 1
ORDER BY ALL;

-- name: missing_layers_or_sites
-- doc: a checkpoint lacks a (layer, site, head) that other checkpoints of the same model and probe have
WITH stats AS (
    SELECT 'activation_stats' AS table_name, suite, model, probe_id, step, weights_sha256, layer,
           site AS what, head
    FROM activation_stats
    UNION ALL
    SELECT 'sketches', suite, model, probe_id, step, weights_sha256, layer,
           site || ':' || kernel || ':' || estimator, head
    FROM sketches
),
checkpoints_seen AS (SELECT DISTINCT table_name, suite, model, probe_id, step, weights_sha256 FROM stats),
expected AS (SELECT DISTINCT table_name, suite, model, probe_id, layer, what, head FROM stats),
final AS (
    SELECT c.table_name, c.suite, c.model, c.step, c.weights_sha256, e.layer, e.what, e.head
    FROM checkpoints_seen c
    JOIN expected e USING (table_name, suite, model, probe_id)
    ANTI JOIN stats s
        ON s.table_name = c.table_name AND s.suite = c.suite AND s.model = c.model
       AND s.probe_id = c.probe_id AND s.step = c.step AND s.weights_sha256 = c.weights_sha256
       AND s.layer = e.layer AND s.what = e.what AND s.head IS NOT DISTINCT FROM e.head
)
SELECT * FROM final ORDER BY ALL;

-- name: tokens_not_monotone
-- doc: tokens_seen decreases while step increases (per suite and model)
WITH ordered AS (
    SELECT DISTINCT suite, model, step, revision, tokens_seen FROM checkpoints
),
final AS (
    SELECT suite, model, step, revision, tokens_seen,
           lag(step) OVER w AS previous_step, lag(tokens_seen) OVER w AS previous_tokens_seen
    FROM ordered
    WINDOW w AS (PARTITION BY suite, model ORDER BY step, tokens_seen)
)
SELECT * FROM final WHERE tokens_seen < previous_tokens_seen ORDER BY ALL;

-- name: duplicate_weights
-- doc: checkpoints with identical weights_sha256 under different steps (the hub serves such revisions)
WITH distinct_checkpoints AS (
    SELECT DISTINCT suite, model, weights_sha256, step, revision FROM checkpoints
)
SELECT suite, model, weights_sha256, list(step ORDER BY step) AS steps, list(revision ORDER BY step) AS revisions
FROM distinct_checkpoints
GROUP BY suite, model, weights_sha256
HAVING count(DISTINCT step) > 1
ORDER BY ALL;
