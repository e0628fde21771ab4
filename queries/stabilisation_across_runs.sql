-- name: stabilisation_across_runs
-- description: Per model, site and layer, the stabilisation of its CKA curve across the model's runs
--    (seeds, learning rates ...): mean, min and max of stabilisation_step (first step from which CKA to
--    the run's own reference stays >= threshold) and of stabilisation_fraction, the number of runs, and
--    how many never stabilised (their step is NULL and left out of mean, min and max). With group_by
--    (a key of the runs' config, e.g. lr or optim.lr), one row per value of that key (group_value) too:
--    the runs of each learning rate side by side.
-- param: $group_by name? = null | a key of the runs' config (runs.config_json; dots for nested keys, e.g. optim.lr): one group per value; null = every run of the model together
-- uses: layer_stabilisation
-- grain: one row per (suite, model, group_value, source, probe_id, site, layer)
-- plot: ranges x=layer value=stabilisation_fraction panels=model,group_value,site
-- title: When each layer stabilises across runs (CKA to the reference stays at or above {threshold})
with grouped as (
    select
        s.*,
        case when $group_by is not null then json_extract_string(
            r.config_json,
            '$.' || array_to_string(list_transform(string_split($group_by, '.'), lambda k: '"' || k || '"'), '.')
        ) end as group_value
    from layer_stabilisation as s
    left join runs as r on r.run_id = s.run_id and r.suite = s.suite and r.model = s.model
    where s.head is null
),
per_layer as (
    select
        suite, model, group_value, source, probe_id, site, layer,
        count(*) as n_runs,
        count(*) - count(stabilisation_step) as n_never,
        avg(stabilisation_step) as mean_stabilisation_step,
        min(stabilisation_step) as min_stabilisation_step,
        max(stabilisation_step) as max_stabilisation_step,
        avg(stabilisation_fraction) as mean_stabilisation_fraction,
        min(stabilisation_fraction) as min_stabilisation_fraction,
        max(stabilisation_fraction) as max_stabilisation_fraction,
        list(run_id order by run_id) as runs
    from grouped
    group by suite, model, group_value, source, probe_id, site, layer
),
final as (
    select * from per_layer
    order by suite, model, group_value, source, probe_id, site, layer
)
select * from final
