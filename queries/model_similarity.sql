-- name: model_similarity
-- description: CKA between the layers of two different models at the same step, per site. This works
--    because every model of a suite sees the same probe: sketches pair only when probe_id, n, kernel and
--    estimator agree. Default step: the last step that every selected model has.
-- param: $step integer? in [0, inf) = null | the checkpoint step; null = the last step common to the selected models
-- uses: sketch_rows
-- grain: one row per (suite, step, site, model_a, layer_a, model_b, layer_b), model_a < model_b
-- plot: heatmap x=layer_a y=layer_b value=cka panels=model_a,model_b,site
-- title: CKA between the layers of two models at step {step}
with common_steps as (
    select suite, step
    from sketch_rows
    group by suite, step
    having count(distinct model) = (select count(distinct model) from sketch_rows as m where m.suite = sketch_rows.suite)
),
chosen as (
    select suite, coalesce($step, max(step)) as step
    from common_steps
    group by suite
),
pairs as (
    select
        a.suite, a.step, a.site, a.model as model_a, a.run_id as run_a, a.layer as layer_a,
        b.model as model_b, b.run_id as run_b, b.layer as layer_b,
        cka_bytes(a.gram_bytes, b.gram_bytes, a.gram_norm, b.gram_norm) as cka
    from sketch_rows as a
    join chosen as c on c.suite = a.suite and c.step = a.step
    join sketch_rows as b
        on b.suite = a.suite and b.step = a.step and b.site = a.site and b.model > a.model
        and b.probe_id = a.probe_id and b.n = a.n and b.head is not distinct from a.head
),
final as (
    select * from pairs
    order by suite, site, model_a, run_a, model_b, run_b, layer_a, layer_b
)
select * from final
