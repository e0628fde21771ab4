-- name: spectra_ranks
-- description: Rank measures of stored weight / gradient spectra. With p_i = s_i / sum_j s_j (zeros
--    dropped): erank = exp(-sum_i p_i ln p_i) (Roy & Vetterli), per = erank / k, where k is chosen by $k:
--      head_dim   the model's head dimension (the paper's choice, even for MLP matrices);
--      rank       the numerical rank, numerical_rank(sv, rows, cols, eps) = #{ s_i > max(s) * max(rows, cols) * eps },
--                 eps the stored precision of each spectrum (numpy's matrix_rank; the macro's header says why);
--      min_side   least(rows, cols), the largest rank the matrix could have.
--    Also stable_rank = sum s^2 / max s^2. head_dim comes from table checkpoints (same weights_sha256).
-- param: $k enum(head_dim|rank|min_side) = rank | what PER divides the effective rank by: rank (the default) keeps PER in [0, 1] for every matrix; head_dim is the paper's choice, meant for per-head matrices
-- param: $tensor tensor? = null | weights or gradients; null = both
-- param: $matrices matrix[]? = null | restrict to these matrices, e.g. [ov, dense_4h_to_h]; null = all
-- param: $suite name? = null | suite to read (the command binds the configured suite); null = every suite
-- param: $models name[]? = null | restrict to these models (the command binds `models=[...]`); null = all
-- param: $per_head boolean = false | true: per-head matrices (head is not null); false: whole matrices
-- uses: numerical_rank, erank, per, stable_rank
-- grain: one row per (suite, model, step, tensor, matrix, layer, head, probe_id); probe_id is NULL for weights and
--    names the probe batch a gradient was taken on
with spectra_rows as (
    select *, numerical_rank(sv, rows, cols, eps) as numerical_rank
    from spectra
    where ($suite is null or suite = $suite)
        and ($models is null or list_contains($models, model))
        and ($tensor is null or tensor = $tensor)
        and ($matrices is null or list_contains($matrices, matrix))
        and (case when $per_head then head is not null else head is null end)
),
head_dims as (
    select suite, model, run_id, weights_sha256, max(d_head) as d_head
    from checkpoints
    group by suite, model, run_id, weights_sha256
),
with_k as (
    select
        s.*,
        case $k when 'head_dim' then h.d_head when 'rank' then s.numerical_rank
            else least(s.rows, s.cols) end as k
    from spectra_rows as s
    left join head_dims as h using (suite, model, run_id, weights_sha256)
),
-- erank once per spectrum (per(sv, k) would compute it again: per is erank / k); the measures read the
-- list in one pass each, the slowest part of this view on the full-study warehouse
measures as (
    select *, erank(sv) as erank, stable_rank(sv) as stable_rank
    from with_k
)
select
    suite, model, run_id, step, tensor, matrix, layer, head, probe_id, rows, cols,
    $k as k_rule, k, numerical_rank,
    erank,
    erank / nullif(k::DOUBLE, 0) as per,
    stable_rank
from measures
