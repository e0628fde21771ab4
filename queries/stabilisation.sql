-- name: stabilisation
-- description: Per layer, the first checkpoint from which CKA to the reference stays >= threshold at
--    every later checkpoint (stabilisation_step; NULL if never), that step as a share of training
--    (stabilisation_fraction), and the layer's mean CKA over the checkpoints.
-- grain: one row per (suite, model, source, probe_id, site, layer, head)
-- plot: bars x=layer value=stabilisation_fraction panels=model,site
-- title: When each layer stabilises (CKA to the reference stays at or above {threshold})
-- uses: layer_stabilisation
with final as (
    select * from layer_stabilisation
    order by suite, model, run_id, source, probe_id, site, layer, head nulls first
)
select * from final
