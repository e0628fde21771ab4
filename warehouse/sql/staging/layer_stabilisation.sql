-- name: layer_stabilisation
-- description: Per layer (and head), the first checkpoint from which its CKA curve stays >= $threshold
--    at every later checkpoint:
--        stabilisation_step = min { s : cka(t) >= threshold for every t >= s }
--    NULL when no such step exists (a NULL or NaN CKA counts as below). stabilisation_fraction is that
--    step over the curve's last step (the share of training); mean_cka is the mean CKA over the
--    checkpoints (a convergence score on the checkpoint grid, used to call a layer's CKA "good").
-- param: $threshold double in [0, 1] = 0.9 | CKA a layer must keep at every later checkpoint
-- uses: cka_curves
-- grain: one row per (suite, model, source, probe_id, site, layer, head)
with marked as (
    select
        *,
        bool_and(coalesce(cka >= $threshold and not isnan(cka), false)) over (
            partition by suite, model, run_id, source, probe_id, site, layer, head order by step
            rows between current row and unbounded following
        ) as stays_above,
        max(step) over (partition by suite, model, run_id, source, probe_id, site, layer, head) as final_step
    from cka_curves
)
select
    suite, model, run_id, source, probe_id, site, layer, head,
    min(step) filter (where stays_above) as stabilisation_step,
    min(step) filter (where stays_above) / nullif(any_value(final_step), 0)::double as stabilisation_fraction,
    any_value(final_step) as final_step,
    avg(cka) as mean_cka,
    count(*) as n_checkpoints
from marked
group by suite, model, run_id, source, probe_id, site, layer, head
