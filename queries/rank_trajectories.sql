-- name: rank_trajectories
-- description: Effective rank and PER (erank / k, k by parameter: head_dim, rank or min_side) of each
--    layer's weight and gradient matrices over training, from the stored spectra; stable rank too.
-- grain: one row per (suite, model, tensor, probe_id, matrix, layer, head, step); probe_id: the probe a gradient was taken on (NULL for weights)
-- plot: lines x=step y=per|erank|stable_rank line=layer dash=tensor panels=model,matrix
-- title: {measure} of each layer's matrices over training
-- uses: spectra_ranks
with final as (
    select * from spectra_ranks
    order by suite, model, run_id, tensor, probe_id nulls first, matrix, layer, head nulls first, step
)
select * from final
