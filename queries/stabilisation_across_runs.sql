-- name: stabilisation_across_runs
-- description: Per model, site and layer, the stabilisation of its CKA curve across the model's runs
--    (seeds, learning rates ...): mean, min and max of stabilisation_step (first step from which CKA to
--    the run's own reference stays >= threshold) and of stabilisation_fraction, the number of runs, and
--    how many never stabilised (their step is NULL and left out of mean, min and max).
-- uses: layer_stabilisation
-- grain: one row per (suite, model, source, probe_id, site, layer)
-- plot: ranges x=layer value=stabilisation_fraction panels=model,site
-- title: When each layer stabilises across runs (CKA to the reference stays at or above {threshold})
with per_layer as (
    select
        suite, model, source, probe_id, site, layer,
        count(*) as n_runs,
        count(*) - count(stabilisation_step) as n_never,
        avg(stabilisation_step) as mean_stabilisation_step,
        min(stabilisation_step) as min_stabilisation_step,
        max(stabilisation_step) as max_stabilisation_step,
        avg(stabilisation_fraction) as mean_stabilisation_fraction,
        min(stabilisation_fraction) as min_stabilisation_fraction,
        max(stabilisation_fraction) as max_stabilisation_fraction,
        list(run_id order by run_id) as runs
    from layer_stabilisation
    where head is null
    group by suite, model, source, probe_id, site, layer
),
final as (
    select * from per_layer
    order by suite, model, source, probe_id, site, layer
)
select * from final
