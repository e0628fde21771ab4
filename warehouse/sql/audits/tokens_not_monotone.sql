-- name: tokens_not_monotone
-- description: tokens_seen decreases while step increases (per suite and model)
-- grain: one row per offending row; zero rows means the audit passes
WITH ordered AS (
    SELECT DISTINCT suite, model, run_id, step, revision, tokens_seen FROM checkpoints
),
final AS (
    SELECT suite, model, run_id, step, revision, tokens_seen,
           lag(step) OVER w AS previous_step, lag(tokens_seen) OVER w AS previous_tokens_seen
    FROM ordered
    WINDOW w AS (PARTITION BY suite, model, run_id ORDER BY step, tokens_seen)
)
SELECT * FROM final WHERE tokens_seen < previous_tokens_seen ORDER BY ALL;
