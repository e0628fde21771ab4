-- name: cka_to_final
-- doc: linear CKA of every (model, layer, site, step) sketch against the same layer and site at the
--      reference step, via the stored Gram norms (cka_normed). Used by benchmarks/query.py.
-- params: $ref_step (BIGINT) the reference checkpoint; $steps (BIGINT[]) the steps to compare, NULL for all.
-- Why NULL for all rather than the full list: an IN-list filter on one side only makes DuckDB underestimate
-- that side and build its hash table there, copying every Gram into it (3.1 s instead of 1.9 s at the
-- study's size, measured); with no filter the small reference side is the build side.
WITH sketch AS (
    SELECT suite, model, layer, site, probe_id, kernel, estimator, step, gram, gram_norm
    FROM sketches
    WHERE ($steps IS NULL OR list_contains($steps, step)) AND head IS NULL
),
ref AS (
    SELECT suite, model, layer, site, probe_id, kernel, estimator, gram, gram_norm
    FROM sketches
    WHERE step = $ref_step AND head IS NULL
),
final AS (
    SELECT s.model, s.layer, s.site, s.step,
           cka_normed(s.gram, r.gram, s.gram_norm, r.gram_norm) AS cka
    FROM sketch s
    JOIN ref r USING (suite, model, layer, site, probe_id, kernel, estimator)
)
SELECT * FROM final
