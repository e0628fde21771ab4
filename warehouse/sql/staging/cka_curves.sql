-- name: cka_curves
-- description: CKA-to-reference curves from one source: 'computed' (from stored sketches, see
--    cka_to_reference) or the name of an imported metrics source (table imported_metrics, metric
--    `cka_scores`, e.g. the paper authors' values imported with --source pythia-paper). Imported curves
--    keep their own reference (their last step; $reference_step does not rebase them) and carry no
--    estimator, n or d; they have whole-layer rows only (head is null).
-- param: $source name? = computed | 'computed', or an imported source name; null = every source side by side
-- uses: cka_to_reference
-- grain: one row per (suite, model, source, probe_id, site, layer, head, step)
select suite, model, run_id, source, site, layer, head, step, cka, reference_step, estimator, n, d, probe_id
from cka_to_reference
where $source is null or $source = 'computed'
union all by name
select
    suite, model, run_id, source, site, layer, null::integer as head, step, value as cka,
    max(step) over (partition by suite, model, run_id, source, site, layer) as reference_step,
    null::varchar as estimator, null::integer as n, null::integer as d, null::varchar as probe_id
from imported_metrics
where metric = 'cka_scores'
    and ($source is null or source = $source)
    and ($suite is null or suite = $suite)
    and ($models is null or list_contains($models, model))
    and ($sites is null or list_contains($sites, site))
    and not $per_head
