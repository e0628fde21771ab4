-- name: run_similarity
-- description: CKA between two runs of the same model at the same step, per layer and site. Do
--    different seeds reach the same representations? From the stored sketches of both runs:
--        cka = <G_a, G_b> / (||G_a|| ||G_b||)   (macro cka_normed)
--    Sketches pair only with the same step, layer, site, head, probe, kernel, estimator and n. With
--    run_a and run_b left null, every two runs of the same model are paired (run_a < run_b).
-- param: $run_a name? = null | one run (layerlake runs lists them); null = every run of the model
-- param: $run_b name? = null | the other run; null = every other run of the same model
-- uses: sketch_rows
-- grain: one row per (suite, model, run_a, run_b, site, layer, head, step)
-- plot: lines x=step y=cka line=layer panels=run_b,site
-- title: CKA between two runs of {model}, per layer (the panels name the other run)
with pairs as (
    select
        a.suite, a.model, a.run_id as run_a, b.run_id as run_b, a.site, a.layer, a.head, a.step,
        cka_bytes(a.gram_bytes, b.gram_bytes, a.gram_norm, b.gram_norm) as cka, a.estimator, a.n, a.d
    from sketch_rows as a
    join sketch_rows as b
        on b.suite = a.suite and b.model = a.model and b.step = a.step and b.layer = a.layer
        and b.site = a.site and b.head is not distinct from a.head and b.probe_id = a.probe_id
        and b.n = a.n and b.run_id <> a.run_id
    where ($run_a is null or a.run_id = $run_a)
        and ($run_b is null or b.run_id = $run_b)
        and ($run_a is not null or $run_b is not null or a.run_id < b.run_id)
),
final as (
    select * from pairs
    order by suite, model, run_a, run_b, site, layer, head nulls first, step
)
select * from final
