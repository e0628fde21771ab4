-- name: step_similarity
-- description: CKA between every pair of checkpoints of one model, for one layer and site (and head):
--    the step x step similarity matrix. Sketches pair only with the same probe and n.
-- param: $model name | the model (required)
-- param: $layer integer in [0, inf) = 0 | 0-based layer
-- param: $site name = mlp_out | site, e.g. ov, mlp_out, attn_out, resid_post
-- param: $head integer? in [0, inf) = null | attention head; null = the whole layer
-- param: $estimator estimator = biased | CKA estimator
-- param: $kernel kernel = linear | kernel the Grams were computed with
-- param: $suite name? = null | suite to read (the command binds the configured suite); null = every suite
-- grain: one row per (step_a, step_b)
-- plot: heatmap x=step_a y=step_b value=cka panels=model
-- title: CKA between the checkpoints of {model}: layer {layer}, site {site}
with sketch as (
    select suite, model, run_id, step, probe_id, n, gram_bytes, gram_norm
    from sketches
    where model = $model and layer = $layer and site = $site and head is not distinct from $head
        and estimator = $estimator and kernel = $kernel and ($suite is null or suite = $suite)
),
pairs as (
    select
        a.suite, a.model, a.run_id, a.step as step_a, b.step as step_b,
        cka_bytes(a.gram_bytes, b.gram_bytes, a.gram_norm, b.gram_norm) as cka
    from sketch as a
    join sketch as b on a.suite = b.suite and a.run_id = b.run_id and a.probe_id = b.probe_id and a.n = b.n
),
final as (
    select suite, model, run_id, $layer as layer, $site as site, step_a, step_b, cka
    from pairs
    order by suite, model, run_id, step_a, step_b
)
select * from final
