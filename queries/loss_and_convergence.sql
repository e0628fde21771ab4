-- name: loss_and_convergence
-- description: Each run's training loss beside its layers' convergence. Per step: the scalar logged
--    as $scalar, and the median over layers of CKA to the run's reference checkpoint, per site.
--    Long form: one series `loss` and one series per site (`median CKA <site>`).
-- param: $scalar name = loss | the logged scalar to show (loss, lr, grad_norm ...)
-- uses: cka_curves
-- grain: one row per (suite, model, run_id, series, step)
-- plot: twin x=step y=value series=series left=$scalar panels=run_id
-- title: Training {scalar} beside the layers' median CKA to the reference checkpoint
with logged as (
    select suite, model, run_id, step, $scalar as series, value
    from scalars
    where name = $scalar
        and ($suite is null or suite = $suite)
        and ($models is null or list_contains($models, model))
),
convergence as (
    select suite, model, run_id, step, 'median CKA ' || site as series, median(cka) as value
    from cka_curves
    where source = 'computed'
    group by suite, model, run_id, site, step
),
final as (
    select * from logged
    union all by name
    select * from convergence
    order by suite, model, run_id, series, step
)
select * from final
