-- name: sketch_rows
-- description: The stored Gram sketches a similarity recipe pairs: one kernel and estimator, whole
--    layers or heads, restricted to a suite, models and sites. Two sketches are only ever paired when
--    their probe_id and n agree as well (checked where they are joined).
-- param: $suite name? = null | suite to read (the command binds the configured suite); null = every suite
-- param: $models name[]? = null | restrict to these models (the command binds `models=[...]`); null = all
-- param: $sites name[]? = null | restrict to these sites, e.g. [ov, mlp_out]; null = all
-- param: $estimator estimator = biased | CKA estimator: biased HSIC (the paper's) or debiased (U-centred)
-- param: $kernel kernel = linear | kernel the Grams were computed with
-- param: $per_head boolean = false | true: per-head sketches (head is not null); false: whole layers
-- grain: one row per (suite, model, step, weights_sha256, layer, site, head, probe_id)
select suite, model, run_id, step, weights_sha256, layer, site, head, probe_id, kernel, estimator, n, d, gram, gram_bytes, gram_norm
from sketches
where estimator = $estimator
    and kernel = $kernel
    and ($suite is null or suite = $suite)
    and ($models is null or list_contains($models, model))
    and ($sites is null or list_contains($sites, site))
    and (case when $per_head then head is not null else head is null end)
