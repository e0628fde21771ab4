-- name: cka_to_final
-- doc: linear CKA of every (model, layer, site, step) sketch against the same layer and site at the
--      reference step, via the stored Gram norms (cka_normed). Used by benchmarks/query.py.
-- params: $ref_step (BIGINT) the reference checkpoint; $steps (BIGINT[]) the steps to compare.
WITH sketch AS (
    SELECT suite, model, layer, site, probe_id, kernel, estimator, step, gram, gram_norm
    FROM sketches
    WHERE list_contains($steps, step) AND head IS NULL
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
