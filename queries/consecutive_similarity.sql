-- name: consecutive_similarity
-- description: CKA between each checkpoint and the previous stored checkpoint of the same model, layer,
--    site and head (same probe and n): how much a layer still moves between checkpoints.
-- grain: one row per (suite, model, site, layer, head, step), from the second checkpoint on
-- plot: heatmap x=step y=layer value=cka panels=model,site
-- title: How much each layer still moves: CKA to the previous checkpoint
-- uses: sketch_rows
with ordered as (
    select
        suite, model, run_id, site, layer, head, step, estimator, n, d,
        lag(step) over w as previous_step,
        cka_bytes(gram_bytes, lag(gram_bytes) over w, gram_norm, lag(gram_norm) over w) as cka
    from sketch_rows
    window w as (partition by suite, model, run_id, site, layer, head, probe_id, n order by step)
),
final as (
    select suite, model, run_id, site, layer, head, previous_step, step, cka, estimator, n, d
    from ordered
    where previous_step is not null
    order by suite, model, run_id, site, layer, head nulls first, step
)
select * from final
