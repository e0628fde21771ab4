-- name: convergence
-- description: CKA of each layer and site to a reference checkpoint of the same model, over training
--    (default reference: the model's last step). Computed from stored sketches with the chosen
--    estimator, or read from an imported source (source=pythia-paper).
-- grain: one row per (suite, model, source, probe_id, site, layer, head, step)
-- plot: heatmap x=step y=layer value=cka panels=model,site
-- title: CKA of each layer to the reference checkpoint, over training
-- uses: cka_curves
with final as (
    select * from cka_curves
    order by suite, model, run_id, source, probe_id, site, layer, head nulls first, step
)
select * from final
