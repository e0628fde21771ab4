-- name: layer_percentiles
-- description: The paper's Figure 1: per checkpoint and site, the 10/25/50/75/90th percentiles across
--    layers (and heads, with per_head=true) of CKA to the reference checkpoint. Percentiles interpolate
--    linearly between order statistics (quantile_cont, numpy's default), so p50 is the median over layers.
-- grain: one row per (suite, model, source, probe_id, site, step)
-- plot: bands x=step points=convergence panels=model,site
-- title: Spread over layers of CKA to the reference checkpoint (Figure 1)
-- uses: cka_curves
with percentiles as (
    select
        suite, model, run_id, source, probe_id, site, step,
        count(cka) as n_layers,
        quantile_cont(cka, 0.10) as p10,
        quantile_cont(cka, 0.25) as p25,
        quantile_cont(cka, 0.50) as p50,
        quantile_cont(cka, 0.75) as p75,
        quantile_cont(cka, 0.90) as p90,
        max(reference_step) as reference_step
    from cka_curves
    group by suite, model, run_id, source, probe_id, site, step
),
final as (
    select * from percentiles
    order by suite, model, run_id, source, probe_id, site, step
)
select * from final
