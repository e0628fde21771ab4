-- name: duplicate_weights
-- description: checkpoints with identical weights_sha256 under different steps (the hub serves such revisions)
-- grain: one row per offending row; zero rows means the audit passes
WITH distinct_checkpoints AS (
    SELECT DISTINCT suite, model, run_id, weights_sha256, step, revision FROM checkpoints
)
SELECT suite, model, run_id, weights_sha256, list(step ORDER BY step) AS steps, list(revision ORDER BY step) AS revisions
FROM distinct_checkpoints
GROUP BY suite, model, run_id, weights_sha256
HAVING count(DISTINCT step) > 1
ORDER BY ALL;
