-- name: missing_layers_or_sites
-- description: a checkpoint lacks a (layer, site, head) that other checkpoints of the same model and probe have, or has no rows of a table they have rows of
-- grain: one row per offending row; zero rows means the audit passes
WITH stats AS (
    SELECT 'activation_stats' AS table_name, suite, model, run_id, probe_id, step, weights_sha256, layer,
           site AS what, head
    FROM activation_stats
    UNION ALL
    SELECT 'sketches', suite, model, run_id, probe_id, step, weights_sha256, layer,
           site || ':' || kernel || ':' || estimator, head
    FROM sketches
),
checkpoints_seen AS (SELECT DISTINCT table_name, suite, model, run_id, probe_id, step, weights_sha256 FROM stats),
expected AS (SELECT DISTINCT table_name, suite, model, run_id, probe_id, layer, what, head FROM stats),
-- a checkpoint row with no row at all in a table other checkpoints of its model and probe have rows of
-- (an extraction with no sites or estimators once replaced its rows with none): what = '(no rows)'
empty AS (
    SELECT t.table_name, c.suite, c.model, c.run_id, c.step, c.weights_sha256,
           NULL::INTEGER AS layer, '(no rows)' AS what, NULL::INTEGER AS head
    FROM checkpoints c
    JOIN (SELECT DISTINCT table_name, suite, model, run_id, probe_id FROM checkpoints_seen) t
        USING (suite, model, run_id, probe_id)
    ANTI JOIN checkpoints_seen s
        ON s.table_name = t.table_name AND s.suite = c.suite AND s.model = c.model AND s.run_id = c.run_id
       AND s.probe_id = c.probe_id AND s.step = c.step AND s.weights_sha256 = c.weights_sha256
),
missing AS (
    SELECT c.table_name, c.suite, c.model, c.run_id, c.step, c.weights_sha256, e.layer, e.what, e.head
    FROM checkpoints_seen c
    JOIN expected e USING (table_name, suite, model, run_id, probe_id)
    ANTI JOIN stats s
        ON s.table_name = c.table_name AND s.suite = c.suite AND s.model = c.model AND s.run_id = c.run_id
       AND s.probe_id = c.probe_id AND s.step = c.step AND s.weights_sha256 = c.weights_sha256
       AND s.layer = e.layer AND s.what = e.what AND s.head IS NOT DISTINCT FROM e.head
),
final AS (SELECT * FROM missing UNION ALL SELECT * FROM empty)
SELECT * FROM final ORDER BY ALL;
