-- name: stabilised_share
-- description: Per model and site, the share of layers stabilised (CKA stays >= threshold from then on)
--    by the fraction by_fraction of training: share_stabilised = #{layers: stabilisation_fraction <=
--    by_fraction} / #layers. The paper's claim: near 1 at 0.2 for large models, lower for small ones.
-- param: $by_fraction double in [0, 1] = 0.2 | share of training (stabilisation_step / last step) to count by
-- grain: one row per (suite, model, source, probe_id, site)
-- plot: none
-- uses: layer_stabilisation
with per_model as (
    select
        suite, model, run_id, source, probe_id, site,
        count(*) as n_layers,
        count(*) filter (where stabilisation_fraction <= $by_fraction) as n_stabilised,
        count(*) filter (where stabilisation_fraction <= $by_fraction) / count(*)::double as share_stabilised,
        median(stabilisation_fraction) as median_stabilisation_fraction,
        count(*) filter (where stabilisation_step is null) as n_never
    from layer_stabilisation
    group by suite, model, run_id, source, probe_id, site
),
final as (
    select * from per_model
    order by suite, model, run_id, source, probe_id, site
)
select * from final
