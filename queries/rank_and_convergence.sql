-- name: rank_and_convergence
-- description: Per model and site, how a layer's rank relates to its convergence. The site's matrix
--    (ov -> ov, mlp_out -> dense_4h_to_h, attn_out -> dense, qkv_last_third -> query_key_value) gives
--    each layer's PER at the model's last spectra step (averaged over heads with per_head=true).
--    spearman: rank correlation (average ranks for ties) between that PER and the layer's
--    stabilisation_fraction, a layer never stabilised ranking last (NULL when undefined: one layer, or all
--    tied); negative = higher rank converges
--    earlier. agreement: the paper's share of layers where "good CKA" (mean CKA above the model's median
--    over layers) and "good PER" (PER above its median) agree: both above, or both at or below.
--    A layer with no CKA value at any step, or no PER, is left out of every column (n_layers counts the
--    layers judged): its convergence is unknown, neither good nor never stabilised.
-- grain: one row per (suite, model, source, probe_id, site, tensor)
-- plot: none
-- uses: layer_stabilisation, spectra_ranks
with site_matrix(site, matrix) as (
    values ('ov', 'ov'), ('mlp_out', 'dense_4h_to_h'), ('attn_out', 'dense'), ('qkv_last_third', 'query_key_value')
),
last_step as (
    select suite, model, run_id, tensor, max(step) as step
    from spectra_ranks
    group by suite, model, run_id, tensor
),
final_per as (
    select r.suite, r.model, r.run_id, r.tensor, r.probe_id, r.matrix, r.layer, avg(r.per) as per
    from spectra_ranks as r
    join last_step as l using (suite, model, run_id, tensor, step)
    group by r.suite, r.model, r.run_id, r.tensor, r.probe_id, r.matrix, r.layer
),
layers as (
    select
        s.suite, s.model, s.run_id, s.source, s.probe_id, s.site, p.tensor, s.layer, p.per, s.mean_cka,
        coalesce(s.stabilisation_fraction, 'infinity'::double) as stabilisation_order
    from layer_stabilisation as s
    join site_matrix as m using (site)
    join final_per as p on p.suite = s.suite and p.model = s.model and p.run_id = s.run_id and p.matrix = m.matrix and p.layer = s.layer
        and (p.probe_id is null or p.probe_id = s.probe_id)  -- a gradient's PER: from the same probe's gradient
    where s.head is null and s.mean_cka is not null and p.per is not null
),
ranked as (
    select
        *,
        rank() over (partition by suite, model, run_id, source, probe_id, site, tensor order by per)
            + (count(*) over (partition by suite, model, run_id, source, probe_id, site, tensor, per) - 1) / 2.0 as per_rank,
        rank() over (partition by suite, model, run_id, source, probe_id, site, tensor order by stabilisation_order)
            + (count(*) over (partition by suite, model, run_id, source, probe_id, site, tensor, stabilisation_order) - 1) / 2.0
            as stabilisation_rank,
        per > median(per) over (partition by suite, model, run_id, source, probe_id, site, tensor) as good_per,
        mean_cka > median(mean_cka) over (partition by suite, model, run_id, source, probe_id, site, tensor) as good_cka
    from layers
),
per_model as (
    select
        suite, model, run_id, source, probe_id, site, tensor,
        count(*) as n_layers,
        nullif(corr(per_rank, stabilisation_rank), 'nan'::double) as spearman,  -- NULL, not NaN, for < 2 layers or all ties
        avg(case when good_per = good_cka then 1.0 else 0.0 end) as agreement,
        median(per) as median_per,
        median(mean_cka) as median_mean_cka
    from ranked
    group by suite, model, run_id, source, probe_id, site, tensor
),
final as (
    select * from per_model
    order by suite, model, run_id, source, probe_id, site, tensor
)
select * from final
